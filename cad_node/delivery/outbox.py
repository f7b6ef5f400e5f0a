"""Sending what is due from the outbox, with capped exponential backoff.

Result objects are files under ``outbox/``; the audit database holds one delivery row per
object and destination. Each call claims the due rows (a lease keeps other senders off them),
sends per destination in parallel (one association each, so a dead or refusing PACS never
delays the others) and records every outcome. A hospital PACS can be down for hours: once the
normal attempt budget is spent the object is reported overdue (an audit event at level error,
its job ``delivery_pending``) and retried at the capped interval for as long as the outbox
retains it; only then is it ``failed`` (``cad-node send --retry-failed`` tries again).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from cad_node import metrics
from cad_node.atna import AuditTrail
from cad_node.audit.deliveries import DeliveryRepository, DueDelivery
from cad_node.audit.models import utcnow
from cad_node.delivery.scu import SendOutcome, send_files
from cad_node.domain import ResultObject
from cad_node.fsutil import write_durably
from cad_node.settings import Destination, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one object."""

    max_attempts: int = 8
    """The normal budget; past it the object is overdue (alerted) but still retried."""
    base_seconds: float = 5.0
    max_seconds: float = 600.0
    retention_seconds: float = 7 * 86400.0
    """How long after its creation an object is retried; then it is failed."""

    def next_attempt(
        self, attempts_done: int, now: datetime, created_at: datetime
    ) -> datetime | None:
        """When to try again after ``attempts_done`` failures; None once retention is over."""
        expires = created_at + timedelta(seconds=self.retention_seconds)
        if now >= expires:
            return None
        exponent = min(max(0, attempts_done - 1), 62)
        delay = min(self.max_seconds, self.base_seconds * 2.0**exponent)
        return min(now + timedelta(seconds=delay), expires)

    def overdue(self, attempts_done: int) -> bool:
        """True on the failure that spends the normal budget (alert once)."""
        return attempts_done == self.max_attempts

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.delivery_max_attempts,
            settings.delivery_backoff_seconds,
            settings.delivery_backoff_max_seconds,
            settings.outbox_retention_days * 86400.0,
        )


@dataclass(frozen=True)
class DeliverySummary:
    """What one pass sent."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Outbox:
    """Sends due result objects to the configured destinations."""

    def __init__(
        self,
        deliveries: DeliveryRepository,
        root: Path,
        destinations: Sequence[Destination],
        *,
        calling_ae: str,
        policy: RetryPolicy,
        timeout: float = 30.0,
        atna: AuditTrail | None = None,
    ) -> None:
        self.deliveries = deliveries
        self.root = root
        self.destinations = {str(d): d for d in destinations}
        self.calling_ae = calling_ae
        self.policy = policy
        self.timeout = timeout
        self.atna = atna or AuditTrail()

    def write(self, job_id: int, objects: Iterable[tuple[str, Dataset]]) -> list[ResultObject]:
        """Write a job's result objects durably (fsync) under ``job-<id>/``; what to record.

        The files exist before any delivery row names them, so a recorded delivery always has
        its file; files of an analysis that is never recorded are :meth:`remove_orphans`'.
        """
        written: list[ResultObject] = []
        for kind, ds in objects:
            relative = f"job-{job_id}/{kind}_{ds.SOPInstanceUID}.dcm"
            write_durably(self.root / relative, _encode(ds))
            written.append(
                ResultObject(
                    kind,
                    str(ds.SOPClassUID),
                    str(ds.SOPInstanceUID),
                    relative,
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                )
            )
        return written

    def remove_orphans(self) -> int:
        """Delete result files no job records (an analysis cut by a crash or gone stale).

        Folders of jobs still queued or running are left alone: their files may not be
        recorded yet. Returns how many files were removed.
        """
        if not self.root.is_dir():
            return 0
        referenced, busy = self.deliveries.outbox_references()
        removed = 0
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            job = folder.name.removeprefix("job-")
            if job.isdigit() and int(job) in busy:
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.relative_to(self.root).as_posix() not in referenced:
                    path.unlink()
                    removed += 1
            if not any(folder.iterdir()):
                folder.rmdir()
        return removed

    def deliver_due(self, *, job_id: int | None = None) -> DeliverySummary:
        """Send every due object (of one job, or all); record each outcome."""
        lease = self.timeout * 4 + 60
        due = self.deliveries.claim_due(utcnow(), lease_seconds=lease, job_id=job_id)
        if not due:
            return DeliverySummary()
        by_destination: dict[str, list[DueDelivery]] = defaultdict(list)
        for item in due:
            by_destination[item.destination].append(item)
        with ThreadPoolExecutor(max_workers=len(by_destination)) as pool:
            results = list(pool.map(self._send_to, by_destination.items()))
        sent = sum(r[0] for r in results)
        retrying = sum(r[1] for r in results)
        failed = sum(r[2] for r in results)
        return DeliverySummary(sent, retrying, failed)

    def _paths(self, rows: Sequence[DueDelivery]) -> list[Path]:
        return [self.root / r.path for r in rows]

    def _send_to(self, item: tuple[str, list[DueDelivery]]) -> tuple[int, int, int]:
        key, rows = item
        destination = self.destinations.get(key)
        if destination is None:
            outcomes = [
                SendOutcome(
                    self.root / r.path, r.sop_instance_uid, None, "destination no longer configured"
                )
                for r in rows
            ]
        else:
            self.atna.transfer_begun(destination.ae_title, destination.host, self._paths(rows))
            outcomes = send_files(
                destination,
                [self.root / r.path for r in rows],
                calling_ae=self.calling_ae,
                timeout=self.timeout,
            )
            self.atna.transferred(destination.ae_title, destination.host, outcomes)
        counts = [0, 0, 0]
        now = utcnow()
        for row, outcome in zip(rows, outcomes, strict=True):
            attempts = row.attempts + 1
            retry_at = (
                None
                if outcome.delivered or destination is None
                else self.policy.next_attempt(attempts, now, row.created_at)
            )
            metrics.DELIVERY_ATTEMPTS.labels(key).inc()
            metrics.DELIVERY_FAILURES.labels(key).inc(0 if outcome.delivered else 1)
            self.deliveries.record_send(
                row.id,
                delivered=outcome.delivered,
                status=outcome.status,
                error=outcome.error,
                retry_at=retry_at,
                overdue=retry_at is not None and self.policy.overdue(attempts),
            )
            counts[0 if outcome.delivered else (1 if retry_at else 2)] += 1
        if counts[1] or counts[2]:
            log.warning(
                "delivery to %s: %d sent, %d to retry, %d failed (%s)",
                key,
                counts[0],
                counts[1],
                counts[2],
                next((o.error for o in outcomes if o.error), ""),
            )
        else:
            log.info("delivered %d object(s) to %s", counts[0], key)
        return counts[0], counts[1], counts[2]
