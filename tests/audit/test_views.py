"""Typed reads: the values the CLI, console and demo show, and their JSON shapes."""

from datetime import timedelta
from pathlib import Path

from factories import mammogram

from cad_node.assembly import identify
from cad_node.audit import overview
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.deliveries import DeliveryRepository
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.audit.views import StudyDetail
from cad_node.domain import (
    MAMMO_CAD_SR,
    DeliveryState,
    InstanceOutcome,
    JobState,
    ResultObject,
    StoredFile,
    StudyState,
)
from cad_node.web import schemas


def _completed_study(tmp_path: Path) -> tuple[AuditRepository, str]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    repo = AuditRepository(make_engine(url))
    info = identify(mammogram(laterality="L", view="CC"))
    stored = StoredFile(path="x.dcm", bytes=10, sha256="0" * 64, transfer_syntax_uid="1.2")
    repo.record_stored(info, stored, status=0, calling_ae="SCU", peer="127.0.0.1:1")
    repo.complete_due_studies(utcnow() + timedelta(seconds=10), quiet_seconds=1)
    return repo, info.study_instance_uid


def test_a_study_reads_as_a_typed_value_and_prints_the_api_shape(tmp_path: Path) -> None:
    repo, uid = _completed_study(tmp_path)

    study = repo.show_study(uid)
    assert isinstance(study, StudyDetail)
    assert (study.state, study.revision, study.views) == (StudyState.COMPLETE, 1, ["L-CC"])
    assert [i.outcome for i in study.instances] == [InstanceOutcome.STORED]
    assert study.instances[0].status == 0 and study.completed_at is not None

    shape = study.to_dict()
    assert shape["status"] == "complete"  # the JSON keeps its key for the state
    assert shape["instances"][0]["status"] == "0x0000"
    assert list(shape)[-3:] == ["instances", "events", "jobs"]
    schemas.StudyDetail.model_validate(shape)  # unknown or missing keys are refused
    [listed] = repo.list_studies()
    schemas.StudyRow.model_validate(listed.to_dict())
    [event] = repo.recent_events(1)
    assert event.kind == "study.completed"
    schemas.EventRow.model_validate(event.to_dict())
    assert set(event.to_dict(of_study=True)) == set(schemas.StudyEvent.model_fields)


def test_a_job_reads_as_a_typed_value_and_prints_the_api_shape(tmp_path: Path) -> None:
    repo, uid = _completed_study(tmp_path)
    jobs = JobRepository(repo.engine)
    job_id, _ = jobs.create_job(uid, 1)
    assert jobs.start_job(job_id, "w") is not None
    sr = ResultObject(MAMMO_CAD_SR, "1.2.840.10008.5.1.4.1.1.88.50", "1.2.3.4", "job-1/sr.dcm")
    model = {"name": "m", "version": "1"}
    jobs.finish_analysis(
        job_id, attempt=1, result={}, model=model, objects=[sr], destinations=["PACS@h:1"]
    )
    deliveries = DeliveryRepository(repo.engine)
    [due] = deliveries.claim_due(utcnow(), lease_seconds=60)
    deliveries.record_send(due.id, delivered=False, status=0xA700, error="full", retry_at=utcnow())

    [job] = jobs.jobs_of_study(uid)
    assert (job.state, job.model_name, job.report_sop_instance_uid) == (
        JobState.DELIVERING,
        "m",
        "1.2.3.4",
    )
    [delivery] = job.deliveries
    assert (delivery.state, delivery.last_status) == (DeliveryState.PENDING, 0xA700)
    shape = job.to_dict()
    assert shape["model"] == {"name": "m", "version": "1"}
    assert shape["deliveries"][0]["last_status"] == "0xA700"
    schemas.JobRow.model_validate(shape)
    detail = overview.study_detail(repo, jobs, uid)
    assert detail is not None and detail.jobs == [job]
    schemas.StudyDetail.model_validate(detail.to_dict())
