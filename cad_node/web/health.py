"""Readiness: database reachable, spool writable above the reserve, SCP listening, broker."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from sqlalchemy import text

from cad_node.errors import OutOfResourcesError
from cad_node.web.context import WebContext

BROKER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Check:
    """One readiness check's outcome; ``detail`` never holds patient data."""

    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail} if self.detail else {"ok": self.ok}


def check_database(ctx: WebContext) -> Check:
    """A round trip to the audit database."""
    try:
        with ctx.repo.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Check(False, f"database unreachable ({type(exc).__name__})")
    return Check(True)


def check_spool(ctx: WebContext) -> Check:
    """Free space above the reserve, and a file can be created where instances land."""
    try:
        ctx.spool.check_space()
        for folder in (ctx.spool.incoming, ctx.spool.root):
            with tempfile.TemporaryFile(dir=folder) as probe:  # unnamed: nothing to clean up
                probe.write(b"\0")
    except OutOfResourcesError as exc:
        return Check(False, str(exc))
    except OSError as exc:
        return Check(False, f"spool not writable ({type(exc).__name__})")
    return Check(True)


def check_scp(ctx: WebContext) -> Check:
    """The storage SCP accepts connections."""
    return Check(True) if ctx.scp_listening() else Check(False, "storage SCP not listening")


def check_broker(ctx: WebContext) -> Check | None:
    """The Celery broker answers; None when the node runs the embedded queue."""
    if not ctx.settings.broker_url:
        return None
    from kombu.connection import Connection

    try:
        url = ctx.settings.broker_url
        with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS
            )
    except Exception as exc:
        return Check(False, f"broker unreachable ({type(exc).__name__})")
    return Check(True)


def readiness(ctx: WebContext) -> dict[str, Check]:
    """Every check that applies to this node, by name."""
    checks = {
        "database": check_database(ctx),
        "spool": check_spool(ctx),
        "scp": check_scp(ctx),
    }
    broker = check_broker(ctx)
    if broker is not None:
        checks["broker"] = broker
    return checks
