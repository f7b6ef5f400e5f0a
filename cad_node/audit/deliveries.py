"""Deliveries in the audit database: what the outbox holds, leases, and every send.

A send is recorded under its job's lock, and the job's last send settles the job in the same
transaction, so two senders finishing a job's last objects at once settle it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cad_node import metrics
from cad_node.audit.jobs import locked_job
from cad_node.audit.models import Delivery, Event, Job, new_event, utcnow
from cad_node.domain import DeliveryState, JobState


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


def _event(kind: str, study_uid: str | None, detail: str, level: str = "info") -> Event:
    return new_event(kind, level=level, detail=detail, study_instance_uid=study_uid)


class DeliveryRepository:
    """Thread-safe access to deliveries (one session per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

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
            job = None if job_id is None else locked_job(session, job_id)
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
                _event(
                    kind,
                    job.study_instance_uid,
                    f"{row.kind} {row.sop_instance_uid} to {row.destination}: status {status_text}"
                    + (f"; {error}" if error else ""),
                    level="info" if delivered else ("error" if retry_at is None else "warning"),
                )
            )
            if overdue:
                session.add(
                    _event(
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
            _settle_job(session, job)

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
                    _event(
                        "delivery.requeued",
                        study_instance_uid,
                        f"{len(failed)} object(s) ({which})" + (f" by {by}" if by else ""),
                    )
                )
            return len(failed)

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

    def backlog(self) -> dict[tuple[str, str], int]:
        """Objects waiting in the outbox per (destination, state): pending or failed."""
        with self._sessions() as session:
            rows = session.execute(
                select(Delivery.destination, Delivery.state, func.count())
                .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.FAILED]))
                .group_by(Delivery.destination, Delivery.state)
            ).all()
            return {(str(dest), str(state)): int(n) for dest, state, n in rows}


def _settle_job(session: Session, job: Job) -> None:
    """A delivering job whose last send is recorded becomes done (all sent) or failed."""
    states = set(session.scalars(select(Delivery.state).where(Delivery.job_id == job.id)).all())
    pending = job.state in (JobState.DELIVERING, JobState.DELIVERY_PENDING)
    if not pending or DeliveryState.PENDING in states:
        return
    job.finished_at = utcnow()
    if states <= {DeliveryState.SENT}:
        job.state = JobState.DONE
        metrics.JOBS.labels(JobState.DONE).inc()
        session.add(_event("job.done", job.study_instance_uid, f"job {job.id} delivered"))
    else:
        job.state = JobState.FAILED
        job.error = "some results were not delivered within retention (see deliveries)"
        metrics.JOBS.labels(JobState.FAILED).inc()
        session.add(
            _event(
                "job.failed",
                job.study_instance_uid,
                f"job {job.id}: {job.error}",
                level="error",
            )
        )
