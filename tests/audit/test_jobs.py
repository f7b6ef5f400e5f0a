"""Jobs in the audit database: what each revision's job analyses."""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import TypeVar

import pytest
from factories import mammogram
from sqlalchemy import Engine, select, update

from cad_node.assembly import identify
from cad_node.audit.db import make_engine, upgrade
from cad_node.audit.deliveries import DeliveryRepository
from cad_node.audit.jobs import JobRepository
from cad_node.audit.models import Delivery, Instance, Study, utcnow
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
def repos(database_url: str) -> Iterator[tuple[AuditRepository, JobRepository]]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield AuditRepository(engine), JobRepository(engine)
    engine.dispose()


def _store(repo: AuditRepository, lat: str, view: str, uid: str = UID) -> str:
    info = identify(mammogram(study_uid=uid, laterality=lat, view=view))
    path = f"{uid}/{info.sop_instance_uid}.dcm"
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
    with pytest.raises(StaleJobError, match="not recorded"):
        jobs.finish_analysis(
            job + 99, attempt=1, result={}, model={}, objects=[sr], destinations=[]
        )


def test_a_stale_attempts_failure_leaves_the_job_to_the_current_one(
    repos: tuple[AuditRepository, JobRepository],
) -> None:
    audit, jobs = repos
    _store(audit, "L", "CC")
    job_id, _ = jobs.create_job(UID, _complete(audit))
    first, second = jobs.start_job(job_id, "w1"), jobs.start_job(job_id, "w2")  # redelivered
    assert first is not None and second is not None and second.attempt == 2
    assert not jobs.fail_job(job_id, "w1 timed out", attempt=first.attempt, terminal=False)
    [job] = jobs.jobs_of_study(UID)
    assert job.state == JobState.RUNNING and job.attempts == 2
    assert jobs.fail_job(job_id, "model error", attempt=second.attempt, terminal=True)
    [job] = jobs.jobs_of_study(UID)
    assert job.state == JobState.FAILED and job.error == "model error"


# Races between workers and nodes that share one database, each with its own engine (its own
# connections). SQLite serialises every writer; PostgreSQL runs them side by side.

ROUNDS = 20

T = TypeVar("T")


def _race(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at once, each in its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture
def engines(database_url: str) -> Iterator[list[Engine]]:
    """A migrated database and two engines on it, as two nodes or workers would have."""
    upgrade(database_url)
    made = [make_engine(database_url) for _ in range(2)]
    yield made
    for engine in made:
        engine.dispose()


def _running_job(audit: AuditRepository, jobs: JobRepository, uid: str) -> tuple[int, int]:
    """A completed one-image study's job, started: ``(job id, attempt)``."""
    _store(audit, "L", "CC", uid)
    job_id, _ = jobs.create_job(uid, _complete(audit))
    start = jobs.start_job(job_id, "setup")
    assert start is not None
    return job_id, start.attempt


def _analysed(
    jobs: JobRepository, job_id: int, attempt: int, destinations: list[str], n: int = 1
) -> None:
    """Record the attempt's analysis into ``n`` objects for each destination."""
    objects = [
        ResultObject("heatmap-sc", "1.2.840.10008.5.1.4.1.1.7", f"1.2.3.{job_id}.{n}", f"{n}.dcm")
        for n in range(n)
    ]
    jobs.finish_analysis(
        job_id, attempt=attempt, result={}, model={}, objects=objects, destinations=destinations
    )


def test_two_senders_never_lease_the_same_delivery(engines: list[Engine]) -> None:
    audit, jobs = AuditRepository(engines[0]), JobRepository(engines[0])
    job_id, attempt = _running_job(audit, jobs, UID)
    _analysed(jobs, job_id, attempt, ["A@h:1", "B@h:2"], n=4)  # eight deliveries
    senders = [DeliveryRepository(engine) for engine in engines]
    for _ in range(ROUNDS):
        now = utcnow()
        with jobs._sessions.begin() as session:  # all due again
            session.execute(update(Delivery).values(next_attempt_at=now - timedelta(seconds=1)))
        claims = _race(*(partial(s.claim_due, now, lease_seconds=60) for s in senders))
        ids = [[d.id for d in claim] for claim in claims]
        assert not set(ids[0]) & set(ids[1]), "a delivery was leased twice"
        assert len(ids[0]) + len(ids[1]) == 8, "a due delivery was leased by no one"


def test_two_nodes_completing_a_study_make_one_job(engines: list[Engine]) -> None:
    nodes = [(AuditRepository(e), JobRepository(e)) for e in engines]

    def assemble(audit: AuditRepository, jobs: JobRepository) -> tuple[int, list[int]]:
        """What a node does: complete due studies and create their jobs, then sweep for
        completed revisions without one; returns (completed, created job ids)."""
        completed = audit.complete_due_studies(utcnow() + timedelta(seconds=10), 1)
        made = [jobs.create_job(c.study_instance_uid, c.revision) for c in completed]
        made += [jobs.create_job(uid, rev) for uid, rev in jobs.studies_without_job()]
        return len(completed), [job_id for job_id, created in made if created]

    for n in range(ROUNDS):
        uid = f"{UID}.{n}"
        _store(nodes[0][0], "L", "CC", uid)
        results = _race(*(partial(assemble, *node) for node in nodes))
        assert sum(completed for completed, _ in results) == 1, "completed twice"
        created = [job_id for _, made in results for job_id in made]
        jobs_of_study = nodes[0][1].jobs_of_study(uid)
        assert len(created) == 1 and len(jobs_of_study) == 1
        assert jobs_of_study[0].revision == 1


def test_the_last_two_sends_of_a_job_settle_it(engines: list[Engine]) -> None:
    """Two destinations' sends recorded at once (the outbox sends to each in its own thread):
    whichever commits last sees the other's and marks the job done."""
    audit, jobs = AuditRepository(engines[0]), JobRepository(engines[0])
    senders = [DeliveryRepository(engine) for engine in engines]
    for n in range(ROUNDS):
        job_id, attempt = _running_job(audit, jobs, f"{UID}.{n}")
        _analysed(jobs, job_id, attempt, ["A@h:1", "B@h:2"])
        due = senders[0].claim_due(utcnow(), lease_seconds=60, job_id=job_id)
        assert len(due) == 2  # one object for each destination
        _race(
            *(
                partial(s.record_send, d.id, delivered=True, status=0, error=None, retry_at=None)
                for s, d in zip(senders, due, strict=True)
            )
        )
        [job] = jobs.jobs_of_study(f"{UID}.{n}")
        assert job.state == JobState.DONE


def _finish(worker: JobRepository, job_id: int, attempt: int) -> bool:
    """Record an attempt's analysis; False when the attempt is no longer current."""
    try:
        _analysed(worker, job_id, attempt, ["A@h:1"])
    except StaleJobError:
        return False
    return True


def test_two_workers_starting_one_job_finish_it_once(engines: list[Engine]) -> None:
    """A redelivered task runs beside the first: each claims an attempt of its own, and only
    the current attempt's results are recorded."""
    audit, jobs = AuditRepository(engines[0]), JobRepository(engines[0])
    workers = [JobRepository(engine) for engine in engines]
    for n in range(ROUNDS):
        uid = f"{UID}.{n}"
        _store(audit, "L", "CC", uid)
        job_id, _ = jobs.create_job(uid, _complete(audit))
        starts = _race(*(partial(w.start_job, job_id, f"w{i}") for i, w in enumerate(workers)))
        attempts = sorted(s.attempt for s in starts if s is not None)
        assert attempts == [1, 2], "two workers were given the same attempt"
        finished = _race(
            *(partial(_finish, w, job_id, a) for w, a in zip(workers, attempts, strict=True))
        )
        assert finished.count(True) == 1
        with jobs._sessions() as session:
            deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        assert len(deliveries) == 1  # one attempt's object, once


def test_an_image_stored_as_its_study_completes_is_in_a_revision_or_reopens_it(
    engines: list[Engine],
) -> None:
    """A late image racing the completion either makes it into the completed revision (and
    so into its job), or re-opens the study for the next one: it is never left out."""
    ingest, assembler = (AuditRepository(e) for e in engines)
    for n in range(ROUNDS):
        uid = f"{UID}.{n}"
        _store(ingest, "L", "CC", uid)
        _race(
            partial(_store, ingest, "R", "CC", uid),
            partial(assembler.complete_due_studies, utcnow() + timedelta(seconds=10), 1),
        )
        with ingest._sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None
            revisions = dict(
                session.execute(
                    select(Instance.view, Instance.revision).where(Instance.study_id == study.id)
                ).all()
            )
        left_out = [view for view, revision in revisions.items() if revision is None]
        assert not left_out or study.state == "receiving", "an image was left out"
        # The views recorded at completion are those of the instances it took.
        taken = sorted(view for view, revision in revisions.items() if revision == 1)
        assert study.revision == 1 and sorted(study.views) == taken
