"""Jobs and deliveries in the audit database: queue state, results and every send."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select, update
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


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for sending."""

    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    attempts: int
    created_at: datetime
    """When the object was queued: retention counts from here."""


def _locked_job(session: Session, job_id: int) -> Job | None:
    """The job, read once this transaction holds it: other writers of the same job wait for
    the commit, so two workers never act on one state (claim the same attempt, or each miss
    the other's last delivery)."""
    lock_rows(session, Job, Job.id == job_id)
    return session.get(Job, job_id)


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
                job = Job(
                    study_id=study_id,
                    study_instance_uid=study_instance_uid,
                    revision=revision,
                    state=JobState.QUEUED,
                    attempts=0,
                    created_at=utcnow(),
                )
                session.add(job)
                session.flush()
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
            job = Job(
                study_id=study_id,
                study_instance_uid=study_instance_uid,
                revision=revision,
                state=JobState.QUEUED,
                attempts=0,
                created_at=utcnow(),
                requested_by=by,
            )
            session.add(job)
            session.flush()
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

    def outbox_references(self) -> tuple[set[str], set[int]]:
        """Outbox paths that recorded jobs name, and the ids of jobs still being analysed
        (whose folders may hold files not recorded yet)."""
        with self._sessions() as session:
            paths = {
                str(o["path"])
                for objects in session.scalars(select(Job.objects).where(Job.objects.is_not(None)))
                for o in objects or []
            }
            paths.update(str(p) for p in session.scalars(select(Delivery.path).distinct()))
            busy = set(
                session.scalars(
                    select(Job.id).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                )
            )
            return paths, busy

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
            job = _locked_job(session, job_id)
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
            job = _locked_job(session, job_id)
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
            job = _locked_job(session, job_id)
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

    def claim_due(
        self, now: datetime, *, lease_seconds: float, job_id: int | None = None, limit: int = 64
    ) -> list[DueDelivery]:
        """Pending deliveries whose time has come, leased so no other sender takes them."""
        lease_until = now + timedelta(seconds=lease_seconds)
        with self._sessions.begin() as session:
            query = (
                select(Delivery)
                .where(
                    Delivery.state == DeliveryState.PENDING,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                )
                .order_by(Delivery.id)
                .limit(limit)
                # PostgreSQL: rows another sender is leasing are passed over, not waited for.
                # SQLite ignores it; the conditional update below is the guard on both.
                .with_for_update(skip_locked=True)
            )
            if job_id is not None:
                query = query.where(Delivery.job_id == job_id)
            claimed = []
            for row in session.scalars(query).all():
                took = session.execute(
                    update(Delivery)
                    .where(
                        and_(
                            Delivery.id == row.id,
                            Delivery.state == DeliveryState.PENDING,
                            Delivery.next_attempt_at == row.next_attempt_at,
                        )
                    )
                    .values(next_attempt_at=lease_until)
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                ).first()
                if took is not None:
                    claimed.append(
                        DueDelivery(
                            row.id,
                            row.job_id,
                            row.destination,
                            row.path,
                            row.sop_instance_uid,
                            row.attempts,
                            row.created_at,
                        )
                    )
            return claimed

    def record_send(
        self,
        delivery_id: int,
        *,
        delivered: bool,
        status: int | None,
        error: str | None,
        retry_at: datetime | None,
        overdue: bool = False,
    ) -> None:
        """Record one send attempt; ``retry_at`` None after a failure means retention is over.

        ``overdue``: this failure spent the normal attempt budget; it is alerted (an error
        event) and the job becomes ``delivery_pending`` while the retries go on.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            job_id = session.scalar(select(Delivery.job_id).where(Delivery.id == delivery_id))
            job = None if job_id is None else _locked_job(session, job_id)
            row = session.get(Delivery, delivery_id)
            if job is None or row is None:
                return
            row.attempts += 1
            row.last_status = status
            row.last_error = error
            if delivered:
                row.state, row.sent_at, row.next_attempt_at = DeliveryState.SENT, now, None
            elif retry_at is None:
                row.state, row.next_attempt_at = DeliveryState.FAILED, None
            else:
                row.next_attempt_at = retry_at
            status_text = "-" if status is None else f"0x{status:04X}"
            kind = (
                "delivery.sent"
                if delivered
                else ("delivery.failed" if retry_at is None else "delivery.retry")
            )
            session.add(
                self._event(
                    kind,
                    job.study_instance_uid,
                    f"{row.kind} {row.sop_instance_uid} to {row.destination}: status {status_text}"
                    + (f"; {error}" if error else ""),
                    level="info" if delivered else ("error" if retry_at is None else "warning"),
                )
            )
            if overdue:
                session.add(
                    self._event(
                        "delivery.overdue",
                        job.study_instance_uid,
                        f"{row.kind} {row.sop_instance_uid} to {row.destination}: not delivered "
                        f"after {row.attempts} attempts; retrying until retention ends",
                        level="error",
                    )
                )
                if job.state == JobState.DELIVERING:
                    job.state = JobState.DELIVERY_PENDING
            session.flush()
            self._settle_job(session, job)

    def _settle_job(self, session: Any, job: Job) -> None:
        states = set(session.scalars(select(Delivery.state).where(Delivery.job_id == job.id)).all())
        pending = job.state in (JobState.DELIVERING, JobState.DELIVERY_PENDING)
        if not pending or DeliveryState.PENDING in states:
            return
        job.finished_at = utcnow()
        if states <= {DeliveryState.SENT}:
            job.state = JobState.DONE
            metrics.JOBS.labels(JobState.DONE).inc()
            session.add(self._event("job.done", job.study_instance_uid, f"job {job.id} delivered"))
        else:
            job.state = JobState.FAILED
            job.error = "some results were not delivered within retention (see deliveries)"
            metrics.JOBS.labels(JobState.FAILED).inc()
            session.add(
                self._event(
                    "job.failed",
                    job.study_instance_uid,
                    f"job {job.id}: {job.error}",
                    level="error",
                )
            )

    def retry_failed(
        self,
        *,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        destination: str | None = None,
        by: str | None = None,
    ) -> int:
        """Put failed deliveries back in the queue (and their jobs back to delivering): all,
        or those of one study, object or destination; ``by`` names who asked, for the log."""
        now = utcnow()
        with self._sessions.begin() as session:
            query = select(Delivery).where(Delivery.state == DeliveryState.FAILED)
            if study_instance_uid is not None:
                query = query.join(Job, Job.id == Delivery.job_id).where(
                    Job.study_instance_uid == study_instance_uid
                )
            if sop_instance_uid is not None:
                query = query.where(Delivery.sop_instance_uid == sop_instance_uid)
            if destination is not None:
                query = query.where(Delivery.destination == destination)
            failed = session.scalars(query).all()
            for row in failed:
                row.state, row.attempts, row.next_attempt_at = DeliveryState.PENDING, 0, now
                row.created_at = now  # a new retention period
                job = session.get(Job, row.job_id)
                if job is not None and job.state == JobState.FAILED and job.result is not None:
                    job.state, job.error, job.finished_at = JobState.DELIVERING, None, None
            if failed or by is not None:  # a request by someone is logged even when moot
                which = sop_instance_uid or study_instance_uid or "all failed"
                session.add(
                    self._event(
                        "delivery.requeued",
                        study_instance_uid,
                        f"{len(failed)} object(s) ({which})" + (f" by {by}" if by else ""),
                    )
                )
            return len(failed)

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

    def backlog(self) -> dict[tuple[str, str], int]:
        """Objects waiting in the outbox per (destination, state): pending or failed."""
        with self._sessions() as session:
            rows = session.execute(
                select(Delivery.destination, Delivery.state, func.count())
                .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.FAILED]))
                .group_by(Delivery.destination, Delivery.state)
            ).all()
            return {(str(dest), str(state)): int(n) for dest, state, n in rows}


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
