"""The task bodies (pipeline/tasks.py) on a real audit database, spool, model and receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from factories import four_views, write
from helpers import make_settings
from model_factory import tiny_model_folder
from pydicom.dataset import Dataset
from receiver import Receiver, start_receiver

from cad_node.assembly import identify
from cad_node.audit.db import upgrade
from cad_node.audit.models import utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.audit.views import JobRecord
from cad_node.domain import JobState
from cad_node.errors import CadNodeError
from cad_node.ingest.spool import Spool
from cad_node.pipeline.context import PipelineContext
from cad_node.pipeline.tasks import MAX_ANALYSIS_ATTEMPTS, analyse, deliver, run_job
from cad_node.settings import Destination, Settings


@dataclass
class Pipeline:
    ctx: PipelineContext
    pacs: Receiver
    views: list[Dataset]
    job_id: int

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def job(self) -> JobRecord:
        [job] = self.ctx.jobs.jobs_of_study(str(self.views[0].StudyInstanceUID))
        return job

    def outbox_files(self) -> list[str]:
        folder = self.settings.outbox_dir / f"job-{self.job_id}"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def spooled(self, ds: Dataset) -> Path:
        return self.settings.spool_dir / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"


def _store_and_complete(settings: Settings, ctx: PipelineContext, views: list[Dataset]) -> int:
    """Spool and record the views as the C-STORE handler does, complete the study: its job."""
    spool = Spool(settings.spool_dir, settings.incoming_dir)
    spool.prepare()
    audit = AuditRepository(ctx.engine)
    for ds in views:
        info = identify(ds)
        received = write(ds, settings.incoming_dir)
        stored = spool.commit(
            received, info.study_instance_uid, info.sop_instance_uid, ds.file_meta.TransferSyntaxUID
        )
        audit.record_stored(info, stored, status=0, calling_ae="MODALITY", peer="127.0.0.1:1")
    [done] = audit.complete_due_studies(utcnow() + timedelta(seconds=10), quiet_seconds=1)
    job_id, _ = ctx.jobs.create_job(done.study_instance_uid, done.revision)
    return job_id


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture
def pipeline(tmp_path: Path, model_folder: Path) -> Iterator[Pipeline]:
    pacs = start_receiver("PACS")
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=pacs.port)
    settings = make_settings(tmp_path / "data", model=str(model_folder), destinations=[destination])
    upgrade(settings.effective_database_url)
    ctx = PipelineContext(settings)
    views = four_views(rows=128, cols=96)
    yield Pipeline(ctx, pacs, views, _store_and_complete(settings, ctx, views))
    ctx.close()
    pacs.stop()


def test_analyse_records_the_result_and_writes_the_objects_once(pipeline: Pipeline) -> None:
    assert analyse(pipeline.ctx, pipeline.job_id) == JobState.DELIVERING
    written = pipeline.outbox_files()
    assert len(written) == 6  # the two SRs and a heatmap secondary capture per view
    job = pipeline.job()
    assert (job.state, job.attempts, job.error) == (JobState.DELIVERING, 1, None)
    assert job.result is not None
    assert sorted(i["view"] for i in job.result["images"]) == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert len(job.deliveries) == 6 and job.model_name == "test-light"
    # a redelivered task finds the job analysed: nothing more is written or recorded
    assert analyse(pipeline.ctx, pipeline.job_id) is None
    assert pipeline.outbox_files() == written
    assert pipeline.job().attempts == 1


def test_deliver_sends_every_object_once_and_the_job_is_done(pipeline: Pipeline) -> None:
    analyse(pipeline.ctx, pipeline.job_id)
    summary = deliver(pipeline.ctx, pipeline.job_id)
    assert (summary.sent, summary.retrying, summary.failed) == (6, 0, 0)
    assert sorted(pipeline.pacs.received) == sorted(
        name.split("_", 1)[1].removesuffix(".dcm") for name in pipeline.outbox_files()
    )
    assert pipeline.job().state == JobState.DONE
    assert deliver(pipeline.ctx, pipeline.job_id).sent == 0  # nothing is due twice


def test_a_stored_file_cut_short_costs_that_image_only(pipeline: Pipeline) -> None:
    cut = pipeline.views[1]
    os.truncate(pipeline.spooled(cut), 200)
    assert analyse(pipeline.ctx, pipeline.job_id) == JobState.DELIVERING
    result = pipeline.job().result
    assert result is not None
    assert len(result["images"]) == 3
    [error] = result["errors"]
    assert error["sop_instance_uid"] == str(cut.SOPInstanceUID)


def test_a_retryable_failure_requeues_the_job_until_the_attempts_are_spent(
    pipeline: Pipeline,
) -> None:
    pipeline.settings.outbox_dir.write_text("a file where the outbox folder should be")
    for attempt in range(1, MAX_ANALYSIS_ATTEMPTS):
        with pytest.raises(CadNodeError) as caught:
            analyse(pipeline.ctx, pipeline.job_id)
        assert caught.value.retryable
        job = pipeline.job()
        assert (job.state, job.attempts) == (JobState.QUEUED, attempt)
        assert job.error is not None and job.error.startswith("internal error")
    assert analyse(pipeline.ctx, pipeline.job_id) == JobState.FAILED
    job = pipeline.job()
    assert (job.state, job.attempts) == (JobState.FAILED, MAX_ANALYSIS_ATTEMPTS)
    assert analyse(pipeline.ctx, pipeline.job_id) is None  # failed for good: not started again


def test_a_failure_retrying_cannot_fix_fails_the_job_at_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    settings = pipeline.settings.model_copy(update={"model": str(tmp_path / "no-such-model")})
    ctx = PipelineContext(settings, pipeline.ctx.engine)
    try:
        assert analyse(ctx, pipeline.job_id) == JobState.FAILED
    finally:
        ctx.close()
    job = pipeline.job()
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert pipeline.outbox_files() == [] and pipeline.pacs.received == []


def test_run_job_analyses_then_delivers(pipeline: Pipeline) -> None:
    run_job(pipeline.ctx, pipeline.job_id)
    assert pipeline.job().state == JobState.DONE
    assert len(pipeline.pacs.received) == 6
