"""The whole node on its embedded queue: store, assemble, analyse, report, deliver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from factories import four_views
from helpers import predecessor_uids, wait_for
from model_factory import tiny_model_folder
from pydicom import dcmread
from receiver import start_receiver
from scu import store

from cad_node.audit.jobs import JobRepository
from cad_node.audit.views import JobRecord
from cad_node.reporting import HEATMAP_SC, MAMMO_CAD_SR, TID1500_SR


def _done_jobs(node: Any, uid: str, n: int) -> list[JobRecord]:
    jobs = JobRepository(node.engine).jobs_of_study(uid)
    return jobs if len(jobs) == n and all(j.state == "done" for j in jobs) else []


@pytest.mark.slow
def test_study_to_reports_at_the_pacs_and_reanalysis_after_a_late_image(
    node_factory: Any, tmp_path: Path
) -> None:
    pacs = start_receiver("PACS")
    try:
        node = node_factory(
            pipeline=True,
            model=str(tiny_model_folder(tmp_path / "model")),
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        )
        views = four_views()
        uid = views[0].StudyInstanceUID
        assert store(node.scp.port, views[:3]) == [0, 0, 0]
        [job] = wait_for(lambda: _done_jobs(node, uid, 1), timeout=60)
        kinds = sorted(d.kind for d in job.deliveries)
        assert kinds == sorted([MAMMO_CAD_SR, TID1500_SR] + [HEATMAP_SC] * 3)
        assert sorted(pacs.received) == sorted(d.sop_instance_uid for d in job.deliveries)
        result = job.result
        assert set(result["breasts"]) == {"L", "R"} and result["missing_views"] == ["R-MLO"]
        assert (job.model_name, job.model_version) == ("test-light", "0.0.1")

        # A late image: the same study is re-opened and analysed again (revision 2), and
        # the new report names the first one as its predecessor.
        assert store(node.scp.port, views[3:]) == [0]
        jobs = wait_for(lambda: _done_jobs(node, uid, 2), timeout=60)
        assert [j.revision for j in jobs] == [1, 2]
        assert jobs[1].result["missing_views"] == []
        first_sr = jobs[0].report_sop_instance_uid
        second = next(o for o in jobs[1].deliveries if o.kind == MAMMO_CAD_SR)
        path = node.settings.outbox_dir / f"job-{jobs[1].job_id}"
        [sr_file] = [p for p in path.iterdir() if p.name.startswith(MAMMO_CAD_SR)]
        sr = dcmread(sr_file)
        assert sr.SOPInstanceUID == second.sop_instance_uid
        predecessors = predecessor_uids(sr)
        assert predecessors == [first_sr]
        assert sr.StudyInstanceUID == uid

        # What ops see at a glance.
        import json

        from click.testing import CliRunner

        from cad_node.cli import main

        env = {"CAD_NODE_DATA_DIR": str(node.settings.data_dir)}
        result = CliRunner(env=env).invoke(main, ["audit", "summary", "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["studies"] == {"complete": 1}
        assert summary["instances"]["last_hour"] == {"stored": 4}
        assert summary["jobs"] == {"done": 2}
        assert summary["deliveries"] == {"sent": 5 + 6}
        assert summary["recent_errors"] == []
    finally:
        pacs.stop()


@pytest.mark.slow
def test_a_study_completed_without_a_job_gets_one_at_the_next_start(
    node_factory: Any, tmp_path: Path
) -> None:
    """The hand-off from a completed study to its job was lost (a crash in between)."""
    ingest_only = node_factory(pipeline=False)
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(ingest_only.scp.port, views) == [0, 0, 0, 0]
    wait_for(lambda: ingest_only.repo.show_study(uid).state == "complete", timeout=10)
    assert JobRepository(ingest_only.engine).studies_without_job() == [(uid, 1)]
    ingest_only.stop()

    node = node_factory(pipeline=True, model=str(tiny_model_folder(tmp_path / "model")))
    [job] = wait_for(lambda: _done_jobs(node, uid, 1), timeout=60)
    assert job.revision == 1 and job.result["missing_views"] == []
    assert JobRepository(node.engine).studies_without_job() == []


@pytest.mark.slow
def test_results_reach_a_pacs_that_was_down_once_it_is_back(
    node_factory: Any, tmp_path: Path
) -> None:
    from services import free_port

    port = free_port()  # nothing listens here yet: the PACS is down
    node = node_factory(
        pipeline=True,
        model=str(tiny_model_folder(tmp_path / "model")),
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=0.5,
        delivery_sweep_seconds=0.2,
    )
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(node.scp.port, views) == [0, 0, 0, 0]

    def retrying() -> bool:
        jobs = JobRepository(node.engine).jobs_of_study(uid)
        return bool(jobs) and any(d.attempts >= 2 for d in jobs[0].deliveries)

    wait_for(retrying, timeout=60)
    [job] = JobRepository(node.engine).jobs_of_study(uid)
    assert job.state == "delivering"
    assert all("cannot connect" in (d.last_error or "") for d in job.deliveries)

    pacs = start_receiver("PACS", port=port)  # the PACS is back
    try:
        [job] = wait_for(lambda: _done_jobs(node, uid, 1), timeout=60)
        assert sorted(pacs.received) == sorted(d.sop_instance_uid for d in job.deliveries)
        assert len(pacs.received) == 6  # every object once: no duplicates after the retries
    finally:
        pacs.stop()


def test_torch_threads_setting_applies_when_the_model_loads(tmp_path: Path) -> None:
    import torch
    from helpers import make_settings

    from cad_node.pipeline.context import PipelineContext

    before = torch.get_num_threads()
    settings = make_settings(
        tmp_path / "data", model=str(tiny_model_folder(tmp_path / "model")), torch_threads=1
    )
    settings.data_dir.mkdir(parents=True)
    ctx = PipelineContext(settings)
    try:
        ctx.model()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        ctx.close()
