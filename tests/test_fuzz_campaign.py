"""The fuzz campaign, small and with a fixed seed: malformed C-STOREs and PDU attacks against a
real `cad-node serve`, interleaved with valid studies (bench/fuzz.py runs it full size)."""

from __future__ import annotations

from pathlib import Path

import pytest
from campaign import NO_RESPONSE, run_fuzz

from cad_node import dicom_status

NEVER_ACCEPTED = {
    "truncated",
    "absurd-length",
    "undefined-length",
    "uid-mismatch",
    "sop-class-mismatch",
    "no-pixel-data",
    "patient-conflict",
    "garbage-dataset",
}
"""Mutations that cannot yield a valid instance (a byte flip in the pixels can; so can a UID
sent as UN, which pydicom reads with the dictionary's VR)."""
RSS_BOUND = 64 * 2**20


@pytest.mark.slow
def test_malformed_stores_get_clear_answers_and_valid_studies_go_through(tmp_path: Path) -> None:
    report = run_fuzz(tmp_path, malformed=200, valid=2, seed=20261202)
    print(report.format())
    assert sum(report.statuses.values()) == 200
    assert report.alive and report.echo, "the node stopped answering"
    # A named status for each malformed store; none is an internal error or left unanswered.
    assert set(report.statuses) <= set(dicom_status.DESCRIPTIONS)
    assert NO_RESPONSE not in report.statuses, report.slow_stores
    assert dicom_status.PROCESSING_FAILURE not in report.statuses
    for kind in NEVER_ACCEPTED & set(report.by_kind):
        assert dicom_status.SUCCESS not in report.by_kind[kind], f"a {kind} store was accepted"
    assert set(report.by_kind["patient-conflict"]) == {
        dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT
    }
    assert report.pdu and not any("left open" in outcome for outcome in report.pdu)
    # Valid studies in between: stored, analysed, every result delivered once.
    assert len(report.valid) == 2
    for study in report.valid:
        assert study.statuses == [dicom_status.SUCCESS] * 4
        assert study.analysed and study.delivered_once, study
    assert report.rss_growth < RSS_BOUND, report.format()
    assert report.tracebacks == 0
    assert report.phi == []
