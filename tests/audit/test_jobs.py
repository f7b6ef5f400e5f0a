"""Jobs in the audit database: what each revision's job analyses."""

from datetime import timedelta
from pathlib import Path

import pytest
from factories import mammogram
from sqlalchemy import update

from cad_node.assembly import identify
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import Study, utcnow
from cad_node.audit.repository import AuditRepository
from cad_node.domain import MAMMO_CAD_SR, JobState, ResultObject, StoredFile
from cad_node.errors import (
    CadNodeError,
    ReanalysisRefusedError,
    StaleJobError,
    UnknownStudyError,
)

UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def repos(tmp_path: Path) -> tuple[AuditRepository, JobRepository]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    engine = make_engine(url)
    return AuditRepository(engine), JobRepository(engine)


def _store(repo: AuditRepository, lat: str, view: str) -> str:
    info = identify(mammogram(study_uid=UID, laterality=lat, view=view))
    path = f"{UID}/{info.sop_instance_uid}.dcm"
    stored = StoredFile(path=path, bytes=10, sha256="0" * 64, transfer_syntax_uid="1.2")
    repo.record_stored(info, stored, status=0, calling_ae="SCU", peer="127.0.0.1:1")
    return path


def _complete(repo: AuditRepository) -> int:
    [done] = repo.complete_due_studies(utcnow() + timedelta(seconds=10), quiet_seconds=1)
    return done.revision


def test_a_job_reads_exactly_the_instances_of_its_revision(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    audit, jobs = repos
    first = [_store(audit, "L", "CC"), _store(audit, "L", "MLO"), _store(audit, "R", "CC")]
    job1, _ = jobs.create_job(UID, _complete(audit))
    late = _store(audit, "R", "MLO")  # arrives before revision 1's job starts
    job2, _ = jobs.create_job(UID, _complete(audit))

    start1 = jobs.start_job(job1, "w")
    assert start1 is not None and start1.instance_paths == first
    start2 = jobs.start_job(job2, "w")
    assert start2 is not None and start2.instance_paths == [*first, late]


def test_a_revision_with_the_instances_of_the_last_report_makes_no_new_one(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    audit, jobs = repos
    _store(audit, "L", "CC")
    job1, _ = jobs.create_job(UID, _complete(audit))
    # Re-opened with nothing new (as a database from before instance revisions can hold).
    with audit._sessions.begin() as session:
        session.execute(update(Study).values(state="receiving"))
    job2, _ = jobs.create_job(UID, _complete(audit))

    start1 = jobs.start_job(job1, "w")
    assert start1 is not None
    sr = ResultObject(MAMMO_CAD_SR, "1.2.840.10008.5.1.4.1.1.88.50", "1.2.3.4", "job-1/sr.dcm")
    jobs.finish_analysis(
        job1, attempt=1, result={}, model={}, objects=[sr], destinations=["PACS@h:1"]
    )

    assert jobs.start_job(job2, "w") is None
    [_, second] = jobs.jobs_of_study(UID)
    assert second.state == JobState.UNCHANGED and second.report_sop_instance_uid is None
    kinds = [e.kind for e in audit.recent_events(100)]
    assert "job.unchanged" in kinds


def test_a_requested_reanalysis_runs_on_the_same_instances_and_names_who_asked(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    audit, jobs = repos
    with pytest.raises(UnknownStudyError):
        jobs.request_reanalysis(UID, "ops")
    paths = [_store(audit, "L", "CC"), _store(audit, "R", "CC")]
    with pytest.raises(ReanalysisRefusedError) as receiving:
        jobs.request_reanalysis(UID, "ops")  # its completion will analyse it
    assert receiving.value.reason == "receiving"
    job1, _ = jobs.create_job(UID, _complete(audit))
    with pytest.raises(ReanalysisRefusedError) as busy:
        jobs.request_reanalysis(UID, "ops")  # job 1 is still queued
    assert busy.value.reason == "busy"
    assert audit.show_study(UID).revision == 1  # a refusal leaves no trace but its reason
    start1 = jobs.start_job(job1, "w")
    assert start1 is not None
    sr = ResultObject(MAMMO_CAD_SR, "1.2.840.10008.5.1.4.1.1.88.50", "1.2.3.4", "job-1/sr.dcm")
    jobs.finish_analysis(job1, attempt=1, result={}, model={}, objects=[sr], destinations=[])

    job2, revision = jobs.request_reanalysis(UID, "ops")
    assert revision == 2 and audit.show_study(UID).revision == 2
    start2 = jobs.start_job(job2, "w")  # not `unchanged`: it was asked for
    assert start2 is not None and start2.instance_paths == paths
    assert [p["sop_instance_uid"] for p in start2.predecessors] == ["1.2.3.4"]
    [_, second] = jobs.jobs_of_study(UID)
    assert (second.state, second.requested_by) == (JobState.RUNNING, "ops")
    [event] = audit.recent_events(10, kind="job.reanalysis_requested")
    assert event.detail == f"job {job2} revision 2: the same instances analysed again, " + (
        "requested by ops"
    )
    assert jobs.studies_without_job() == []


def test_a_job_of_an_unknown_study_is_refused_with_a_typed_error(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    _, jobs = repos
    with pytest.raises(UnknownStudyError) as refused:
        jobs.create_job(UID, 1)
    assert isinstance(refused.value, CadNodeError) and not refused.value.retryable


def test_only_the_current_attempt_may_finish_a_job(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    audit, jobs = repos
    _store(audit, "L", "CC")
    job, _ = jobs.create_job(UID, _complete(audit))
    assert jobs.start_job(job, "first") is not None
    assert jobs.start_job(job, "second") is not None  # redelivered: attempt 2 is current
    sr = ResultObject(MAMMO_CAD_SR, "1.2.840.10008.5.1.4.1.1.88.50", "1.2.3.4", "job-1/sr.dcm")
    with pytest.raises(StaleJobError) as stale:
        jobs.finish_analysis(job, attempt=1, result={}, model={}, objects=[sr], destinations=[])
    assert not stale.value.retryable
    [recorded] = jobs.jobs_of_study(UID)
    assert (recorded.state, recorded.result) == (JobState.RUNNING, None)
    jobs.finish_analysis(job, attempt=2, result={}, model={}, objects=[sr], destinations=[])
    [recorded] = jobs.jobs_of_study(UID)
    assert recorded.state == JobState.DONE
