"""The chaos campaign, small and with a fixed seed: a SIGKILL of `cad-node serve` and a PACS
outage while studies come in (bench/chaos.py runs it full size)."""

from __future__ import annotations

from pathlib import Path

import pytest
from campaign import run_chaos


@pytest.mark.slow
def test_a_crash_and_an_outage_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    report = run_chaos(
        tmp_path, studies=3, associations=3, kills=1, outage_seconds=3.0, seed=20261202
    )
    print(report.format())
    assert any("SIGKILLed" in e for e in report.events)
    assert any("PACS back" in e for e in report.events)
    assert report.alive
    assert len(report.studies) == 3
    for study in report.studies:
        assert len(study.acknowledged) == 4, "a sender gave up"
        assert study.stored == study.acknowledged, "an acknowledged image was lost"
        assert study.jobs and set(study.jobs.values()) == {"done"}, study.jobs
        # the last revision reports all four views (two SRs, four heatmaps); an earlier one,
        # cut short by a kill, reports what it had (two SRs and a heatmap at least)
        assert study.results >= 6 + 3 * (len(study.jobs) - 1), study
        assert study.missing == 0 and study.unknown == 0 and study.changed_resends == 0, study
    assert report.lost == 0
    assert report.phi == []
