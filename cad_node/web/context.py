"""What the web app reads: the node's repositories, spool and SCP state, passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cad_node.atna import AuditTrail
from cad_node.audit.deliveries import DeliveryRepository
from cad_node.audit.jobs import JobRepository
from cad_node.audit.repository import AuditRepository
from cad_node.ingest.spool import Spool
from cad_node.settings import Settings


@dataclass(frozen=True)
class WebContext:
    """Dependencies of the web app, bound when the node builds it (no globals)."""

    settings: Settings
    repo: AuditRepository
    jobs: JobRepository
    spool: Spool
    scp_listening: Callable[[], bool]
    deliver_now: Callable[[], object] | None = None
    """Send what is due in the outbox now; None when this node runs no pipeline."""
    atna: AuditTrail = field(default_factory=AuditTrail)
    """IHE ATNA audit messages of console logins and logouts (disabled by default)."""
    reanalyse: Callable[[str, str], tuple[int, int]] | None = None
    """Analyse a complete study again, ``(study UID, who asks)``: records a new revision and
    its job, queues it, returns ``(job_id, revision)``; None when this node runs no pipeline."""

    @property
    def deliveries(self) -> DeliveryRepository:
        """The deliveries of the same database as ``jobs``."""
        return DeliveryRepository(self.jobs.engine)
