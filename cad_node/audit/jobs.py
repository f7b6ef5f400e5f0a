"""Jobs in the audit database: queue state, attempts and results (sends: ``deliveries``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cad_node import metrics
from cad_node.audit.db import lock_rows
from cad_node.audit.models import (
    REQUESTED_BY_LENGTH,
    Delivery,
    Event,
    Instance,
    Job,
    Study,
    new_event,
    utcnow,
)
from cad_node.audit.views import DeliveryRecord, JobRecord, LatestJob
from cad_node.domain import (
    MAMMO_CAD_SR,
    DeliveryState,
    InstanceOutcome,
    JobState,
    ResultObject,
    StudyState,
)
from cad_node.errors import ReanalysisRefusedError, StaleJobError, UnknownStudyError


@dataclass(frozen=True)
class JobStart:
    """What a worker needs to run a job, read when it claims it."""

    job_id: int
    study_instance_uid: str
    revision: int
    attempt: int
    instance_paths: list[str]
    """Spool-relative paths of the stored instances the model can analyse, exactly those of
    the job's revision (fixed when the study completed), not whatever has arrived since."""
    other_paths: list[str]
    """Spool-relative paths of the study's other stored instances (headers are enough)."""
    predecessors: list[dict[str, str]]
    """The result objects of the study's latest earlier analysed job (for Predecessor
    Documents Sequence); empty for a first analysis."""


def locked_job(session: Session, job_id: int) -> Job | None:
    """The job, read once this transaction holds it: other writers of the same job wait for
    the commit, so two workers never act on one state (claim the same attempt, or each miss
    the other's last delivery)."""
    lock_rows(session, Job, Job.id == job_id)
    return session.get(Job, job_id)


def _new_job(
    session: Session,
    study_id: int,
    study_instance_uid: str,
    revision: int,
    *,
    requested_by: str | None = None,
) -> Job:
    """A queued job of the study revision, added and flushed (so it has its id)."""
    job = Job(
        study_id=study_id,
        study_instance_uid=study_instance_uid,
        revision=revision,
        state=JobState.QUEUED,
        attempts=0,
        created_at=utcnow(),
        requested_by=requested_by,
    )
    session.add(job)
    session.flush()
    return job


class JobRepository:
    """Thread-safe access to jobs and deliveries (one session per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _event(self, kind: str, study_uid: str | None, detail: str, level: str = "info") -> Event:
        return new_event(kind, level=level, detail=detail, study_instance_uid=study_uid)

    def create_job(self, study_instance_uid: str, revision: int) -> tuple[int, bool]:
        """The job for this study revision, created if new: ``(job_id, created)``.

        One job per (study, revision): a redelivered completion or a restart never creates a
        second, independent job for the same content. Raises :class:`UnknownStudyError` when
        no such study is recorded.
        """
        try:
            with self._sessions.begin() as session:
                study_id = session.scalar(
                    select(Study.id).where(Study.study_instance_uid == study_instance_uid)
                )
                if study_id is None:
                    raise UnknownStudyError(f"unknown study {study_instance_uid}")
                job = _new_job(session, study_id, study_instance_uid, revision)
                session.add(
                    self._event(
                        "job.queued", study_instance_uid, f"job {job.id} revision {revision}"
                    )
                )
                return job.id, True
        except IntegrityError:
            with self._sessions() as session:
                existing = session.scalar(
                    select(Job.id).where(
                        Job.study_instance_uid == study_instance_uid, Job.revision == revision
                    )
                )
                assert existing is not None
                return existing, False

    def request_reanalysis(self, study_instance_uid: str, by: str) -> tuple[int, int]:
        """A new revision of a complete study, with the same instances, and its job: ``(job_id,
        revision)``. The job records ``by`` and runs although nothing changed; its SR
        references the previous one like any re-analysis.

        Raises :class:`UnknownStudyError`, or :class:`ReanalysisRefusedError` while the study
        is receiving images (its completion analyses it) or a job of it is queued or running.
        """
        by = by[:REQUESTED_BY_LENGTH]
        with self._sessions.begin() as session:
            # Atomic against a racing image: only a study still complete gets a new revision.
            bumped = session.execute(
                update(Study)
                .where(
                    Study.study_instance_uid == study_instance_uid,
                    Study.state == StudyState.COMPLETE,
                )
                .values(revision=Study.revision + 1)
                .returning(Study.id, Study.revision)
            ).first()
            if bumped is None:
                state = session.scalar(
                    select(Study.state).where(Study.study_instance_uid == study_instance_uid)
                )
                if state is None:
                    raise UnknownStudyError(f"unknown study {study_instance_uid}")
                raise ReanalysisRefusedError(
                    "the study is receiving images; it is analysed when it completes",
                    reason="receiving",
                )
            study_id, revision = bumped
            busy = session.scalar(
                select(Job.id)
                .where(
                    Job.study_id == study_id,
                    Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
                )
                .limit(1)
            )
            if busy is not None:  # the transaction, revision included, rolls back
                raise ReanalysisRefusedError(
                    f"job {busy} of the study is still queued or running", reason="busy"
                )
            job = _new_job(session, study_id, study_instance_uid, revision, requested_by=by)
            session.add(
                self._event(
                    "job.reanalysis_requested",
                    study_instance_uid,
                    f"job {job.id} revision {revision}: the same instances analysed again, "
                    f"requested by {by}",
                )
            )
            session.add(
                self._event("job.queued", study_instance_uid, f"job {job.id} revision {revision}")
            )
            return job.id, revision

    def studies_without_job(
        self, completed_before: datetime | None = None
    ) -> list[tuple[str, int]]:
        """Completed study revisions that have no job yet (the hand-off was interrupted).

        ``completed_before``: only those completed earlier, leaving alone a hand-off that is
        under way right now.
        """
        with self._sessions() as session:
            query = (
                select(Study.study_instance_uid, Study.revision)
                .outerjoin(Job, and_(Job.study_id == Study.id, Job.revision == Study.revision))
                .where(Study.state == StudyState.COMPLETE, Job.id.is_(None))
            )
            if completed_before is not None:
                query = query.where(Study.completed_at < completed_before)
            return [(str(uid), int(rev)) for uid, rev in session.execute(query).all()]

    def unfinished_jobs(self) -> list[int]:
        """Jobs queued or interrupted while running (re-queued at start-up)."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Job.id)
                    .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                    .order_by(Job.id)
                )
            )

    def start_job(self, job_id: int, worker: str) -> JobStart | None:
        """Claim a job for analysis; None when it is already past analysis (idempotence)."""
        with self._sessions.begin() as session:
            job = locked_job(session, job_id)
            if job is None or job.state not in (JobState.QUEUED, JobState.RUNNING):
                return None
            previous = session.execute(
                select(Job.revision, Job.objects)
                .where(
                    Job.study_id == job.study_id,
                    Job.revision < job.revision,
                    Job.objects.is_not(None),
                )
                .order_by(Job.revision.desc())
                .limit(1)
            ).first()
            if (
                previous is not None
                and job.requested_by is None  # a re-analysis asked for runs regardless
                and not self._new_since(session, job, previous.revision)
            ):
                job.state, job.finished_at, job.error = JobState.UNCHANGED, utcnow(), None
                session.add(
                    self._event(
                        "job.unchanged",
                        job.study_instance_uid,
                        f"job {job.id} revision {job.revision}: the same instances as revision "
                        f"{previous.revision}; no new report",
                    )
                )
                return None
            job.state = JobState.RUNNING
            job.attempts += 1
            job.worker = worker
            job.started_at = utcnow()
            stored = session.execute(
                select(Instance.path, Instance.view)
                .where(
                    Instance.study_id == job.study_id,
                    Instance.outcome == InstanceOutcome.STORED,
                    Instance.path.is_not(None),
                    Instance.revision <= job.revision,
                )
                .order_by(Instance.id)
            ).all()
            session.add(
                self._event(
                    "job.started",
                    job.study_instance_uid,
                    f"job {job.id} attempt {job.attempts} on {worker}",
                )
            )
            return JobStart(
                job_id=job.id,
                study_instance_uid=job.study_instance_uid,
                revision=job.revision,
                attempt=job.attempts,
                instance_paths=[p for p, view in stored if p and view],
                other_paths=[p for p, view in stored if p and not view],
                predecessors=list(previous.objects or []) if previous else [],
            )

    @staticmethod
    def _new_since(session: Session, job: Job, revision: int) -> bool:
        """True when the job's revision includes an instance that ``revision`` did not."""
        found = session.scalar(
            select(Instance.id)
            .where(
                Instance.study_id == job.study_id,
                Instance.outcome == InstanceOutcome.STORED,
                Instance.revision > revision,
                Instance.revision <= job.revision,
            )
            .limit(1)
        )
        return found is not None

    def finish_analysis(
        self,
        job_id: int,
        *,
        attempt: int,
        result: dict[str, Any],
        model: dict[str, str],
        objects: Sequence[ResultObject],
        destinations: Sequence[str],
    ) -> JobState:
        """Record the analysis and queue one delivery per object and destination, atomically.

        Only the worker holding the job's current ``attempt`` may finish it: a stale worker (one
        presumed dead whose task was redelivered) gets :class:`StaleJobError` and its results
        are discarded, so a job's results are recorded and sent once; so does a job id that
        was never recorded.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            job = locked_job(session, job_id)
            if job is None:
                raise StaleJobError(f"job {job_id} is not recorded")
            if job.state != JobState.RUNNING or job.attempts != attempt:
                raise StaleJobError(f"job {job_id} attempt {attempt} is no longer current")
            job.result = result
            job.model_name = model.get("name")
            job.model_version = model.get("version")
            job.model_sha256 = model.get("sha256")
            job.objects = [dataclasses.asdict(o) for o in objects]
            job.error = None
            for destination in destinations:
                for obj in objects:
                    session.add(
                        Delivery(
                            job_id=job_id,
                            destination=destination,
                            kind=obj.kind,
                            sop_class_uid=obj.sop_class_uid,
                            sop_instance_uid=obj.sop_instance_uid,
                            path=obj.path,
                            state=DeliveryState.PENDING,
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
            job.state = JobState.DELIVERING if destinations and objects else JobState.DONE
            if job.state == JobState.DONE:
                job.finished_at = now
                metrics.JOBS.labels(JobState.DONE).inc()
            exam = result.get("exam_score")
            session.add(
                self._event(
                    "job.analysed",
                    job.study_instance_uid,
                    f"job {job_id}: exam score {exam if exam is None else f'{exam:.3f}'}; "
                    f"{len(objects)} object(s) for {len(destinations)} destination(s)",
                )
            )
            return JobState(job.state)

    def fail_job(self, job_id: int, error: str, *, attempt: int, terminal: bool) -> bool:
        """Record a failed attempt: back to queued for a retry, or failed for good.

        False, recording nothing, when ``attempt`` is no longer the job's current one: a stale
        worker's failure must not re-queue or fail a job another attempt runs or finished.
        """
        with self._sessions.begin() as session:
            job = locked_job(session, job_id)
            if job is None or job.state != JobState.RUNNING or job.attempts != attempt:
                return False
            job.error = error
            job.state = JobState.FAILED if terminal else JobState.QUEUED
            if terminal:
                job.finished_at = utcnow()
            metrics.JOBS.labels("failed" if terminal else "retry").inc()
            session.add(
                self._event(
                    "job.failed" if terminal else "job.retry",
                    job.study_instance_uid,
                    f"job {job_id} attempt {job.attempts}: {error}",
                    level="error" if terminal else "warning",
                )
            )
            return True

    def latest_jobs(self, study_instance_uids: Sequence[str]) -> dict[str, LatestJob]:
        """The newest job of each study: its state and exam score (for the studies page)."""
        if not study_instance_uids:
            return {}
        with self._sessions() as session:
            newest = (
                select(func.max(Job.id))
                .where(Job.study_instance_uid.in_(study_instance_uids))
                .group_by(Job.study_instance_uid)
            )
            jobs = session.scalars(select(Job).where(Job.id.in_(newest))).all()
            return {
                job.study_instance_uid: LatestJob(
                    JobState(job.state), (job.result or {}).get("exam_score")
                )
                for job in jobs
            }

    def result_objects(self, study_instance_uid: str) -> dict[int, list[ResultObject]]:
        """The result objects each of the study's jobs wrote to the outbox, by job id."""
        with self._sessions() as session:
            rows = session.execute(
                select(Job.id, Job.objects).where(
                    Job.study_instance_uid == study_instance_uid, Job.objects.is_not(None)
                )
            ).all()
            return {
                int(job_id): [ResultObject(**o) for o in objects or []] for job_id, objects in rows
            }

    def jobs_of_study(self, study_instance_uid: str) -> list[JobRecord]:
        """Jobs of a study with their deliveries, oldest first (for ``audit show``)."""
        with self._sessions() as session:
            jobs = session.scalars(
                select(Job).where(Job.study_instance_uid == study_instance_uid).order_by(Job.id)
            ).all()
            out = []
            for job in jobs:
                deliveries = session.scalars(
                    select(Delivery).where(Delivery.job_id == job.id).order_by(Delivery.id)
                ).all()
                out.append(_job_record(job, deliveries))
            return out

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs and deliveries per state, for ops at a glance."""
        with self._sessions() as session:
            jobs = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            sends = session.execute(
                select(Delivery.state, func.count()).group_by(Delivery.state)
            ).all()
            return {
                "jobs": {str(state): int(n) for state, n in jobs},
                "deliveries": {str(state): int(n) for state, n in sends},
            }


def _job_record(job: Job, deliveries: Sequence[Delivery]) -> JobRecord:
    report = next((o for o in job.objects or [] if o["kind"] == MAMMO_CAD_SR), None)
    return JobRecord(
        job_id=job.id,
        revision=job.revision,
        state=JobState(job.state),
        attempts=job.attempts,
        worker=job.worker,
        error=job.error,
        model_name=job.model_name,
        model_version=job.model_version,
        result=job.result,
        report_sop_instance_uid=None if report is None else str(report["sop_instance_uid"]),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        requested_by=job.requested_by,
        deliveries=[
            DeliveryRecord(
                destination=d.destination,
                kind=d.kind,
                sop_instance_uid=d.sop_instance_uid,
                state=DeliveryState(d.state),
                attempts=d.attempts,
                last_status=d.last_status,
                last_error=d.last_error,
                sent_at=d.sent_at,
            )
            for d in deliveries
        ],
    )
