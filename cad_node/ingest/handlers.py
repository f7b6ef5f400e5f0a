"""pynetdicom event handlers: validate, spool durably, record, answer a named status.

Handlers get their dependencies bound as an extra argument (``IngestContext``), never from
globals. They never raise to pynetdicom: every failure becomes a DICOM status, an audit row and
one log line without patient data.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from cad_node import dicom_status, metrics, phi
from cad_node.assembly import identify
from cad_node.atna import AuditTrail
from cad_node.domain import InstanceOutcome
from cad_node.errors import (
    CadNodeError,
    DuplicateInstanceError,
    MissingUidError,
    OutOfResourcesError,
    PatientConflictError,
    PixelDataError,
    SopClassMismatchError,
    UndecodablePixelDataError,
    UnreadableElementError,
)
from cad_node.ingest.receive_path import receiving_file
from cad_node.ingest.spool import Spool, is_out_of_space
from cad_node.ingest.validate import check_pixel_data, check_pixels_decode, check_uids, read_header
from cad_node.settings import AllowedCallingAE

if TYPE_CHECKING:  # ingest records through the repository it is given, never importing audit
    from cad_node.audit.repository import AuditRepository

log = logging.getLogger(__name__)

_STATUS_BY_ERROR: tuple[tuple[type[CadNodeError], int], ...] = (
    (OutOfResourcesError, dicom_status.OUT_OF_RESOURCES),
    (SopClassMismatchError, dicom_status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (MissingUidError, dicom_status.CANNOT_UNDERSTAND_MISSING_UID),
    (PatientConflictError, dicom_status.CANNOT_UNDERSTAND_PATIENT_CONFLICT),
    (UndecodablePixelDataError, dicom_status.CANNOT_UNDERSTAND_PIXEL_ENCODING),
    (PixelDataError, dicom_status.CANNOT_UNDERSTAND_PIXEL_DATA),
    (UnreadableElementError, dicom_status.CANNOT_UNDERSTAND_ELEMENT_VALUE),
    (CadNodeError, dicom_status.CANNOT_UNDERSTAND_UNDECODABLE),
)


def status_for(exc: CadNodeError) -> int:
    """The DIMSE status that answers an error."""
    for kind, status in _STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return dicom_status.PROCESSING_FAILURE


@dataclass(frozen=True)
class IngestContext:
    """What the handlers need, bound to them when the server starts."""

    repo: AuditRepository
    spool: Spool
    ae_title: str
    allowed_calling_aes: tuple[AllowedCallingAE, ...]
    atna: AuditTrail = field(default_factory=AuditTrail)
    """IHE ATNA audit messages (disabled by default)."""
    slow_store_seconds: float = 5.0
    """A C-STORE taking longer than this logs one warning with the time of each phase."""


class StoreTimer:
    """Where a C-STORE's time went: the seconds between marks, named by the phase they end."""

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        """End ``phase`` now."""
        now = time.monotonic()
        self.phases.append((phase, now - self._last))
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start

    def report_if_slow(self, threshold: float, sop_uid: str, status: int) -> None:
        """One warning when the store took longer than ``threshold`` seconds."""
        self.mark("rest")
        if self.total <= threshold:
            return
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases)
        log.warning(
            "slow C-STORE of instance %s: %.1f s (%s); answered 0x%04X",
            sop_uid,
            self.total,
            phases,
            status,
        )


def _peer(event: Any) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"


def handle_echo(event: Any, ctx: IngestContext) -> int:
    """C-ECHO: always Success while the node serves."""
    return dicom_status.SUCCESS


def handle_store(event: Any, ctx: IngestContext) -> int:
    """C-STORE: answer Success only once the instance is durable on disk and recorded."""
    timer = StoreTimer()
    status = dicom_status.PROCESSING_FAILURE
    try:
        status = _store(event, ctx, timer)
        return status
    finally:
        timer.report_if_slow(
            ctx.slow_store_seconds, str(event.request.AffectedSOPInstanceUID or ""), status
        )


def _store(event: Any, ctx: IngestContext, timer: StoreTimer) -> int:
    calling_ae, peer = _peer(event)
    request = event.request
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    sop_class = str(request.AffectedSOPClassUID or "")
    transfer_syntax = str(event.context.transfer_syntax)
    received: Path = event.dataset_path
    study_uid: str | None = None
    try:
        received_file = receiving_file(request)
        if received_file is not None and received_file.error is not None:
            if is_out_of_space(received_file.error):
                raise OutOfResourcesError("disk full while receiving")
            raise received_file.error
        ctx.spool.check_space()
        ds = read_header(received)
        check_uids(ds, sop_class_uid=sop_class, sop_instance_uid=sop_uid)
        check_pixel_data(ds)
        check_pixels_decode(ds, received)
        timer.mark("check")
        info = identify(ds)
        study_uid = info.study_instance_uid
        ctx.repo.check_patient(study_uid, info.patient)  # before a duplicate is acknowledged
        if ctx.repo.is_stored(sop_uid):
            return _duplicate(ctx, calling_ae, peer, sop_uid, sop_class, study_uid)
        digest = received_file.sha256 if received_file is not None else None
        timer.mark("lookup")
        stored = ctx.spool.commit(received, study_uid, sop_uid, transfer_syntax, sha256=digest)
        timer.mark("spool")
        try:
            reopened = ctx.repo.record_stored(
                info, stored, status=dicom_status.SUCCESS, calling_ae=calling_ae, peer=peer
            )
        except DuplicateInstanceError:
            return _duplicate(ctx, calling_ae, peer, sop_uid, sop_class, study_uid)
        except PatientConflictError:  # another patient's instance raced in and made the study
            if not ctx.repo.is_stored(sop_uid):
                ctx.spool.path_of(stored.path).unlink(missing_ok=True)
            raise
        timer.mark("record")
        ctx.atna.instance_received(event.assoc, calling_ae, peer, info)
        log.info(
            "stored instance %s of study %s (%s, %.1f MB) from %s%s",
            sop_uid,
            study_uid,
            info.view or info.not_analysed_reason,
            stored.bytes / 1e6,
            calling_ae,
            "; study re-opened" if reopened else "",
        )
        return dicom_status.SUCCESS
    except CadNodeError as exc:
        return _reject(ctx, exc, calling_ae, peer, sop_uid, sop_class, study_uid, transfer_syntax)
    except OSError as exc:
        if is_out_of_space(exc):
            error = OutOfResourcesError("disk full while storing")
            return _reject(
                ctx, error, calling_ae, peer, sop_uid, sop_class, study_uid, transfer_syntax
            )
        return _internal_error(ctx, exc, calling_ae, peer, sop_uid, sop_class, study_uid)
    except Exception as exc:
        return _internal_error(ctx, exc, calling_ae, peer, sop_uid, sop_class, study_uid)


def _duplicate(
    ctx: IngestContext, calling_ae: str, peer: str, sop_uid: str, sop_class: str, study_uid: str
) -> int:
    ctx.repo.record_unstored(
        outcome=InstanceOutcome.DUPLICATE,
        status=dicom_status.SUCCESS,
        reason="already stored; kept the first copy",
        calling_ae=calling_ae,
        peer=peer,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_instance_uid=study_uid,
    )
    log.info("duplicate instance %s from %s: already stored", sop_uid, calling_ae)
    return dicom_status.SUCCESS


def _reject(
    ctx: IngestContext,
    exc: CadNodeError,
    calling_ae: str,
    peer: str,
    sop_uid: str,
    sop_class: str,
    study_uid: str | None,
    transfer_syntax: str,
) -> int:
    status = status_for(exc)
    with suppress(Exception):  # the answer to the peer must not depend on the audit DB
        ctx.repo.record_unstored(
            outcome=InstanceOutcome.REJECTED,
            status=status,
            reason=str(exc),
            calling_ae=calling_ae,
            peer=peer,
            sop_instance_uid=sop_uid or None,
            sop_class_uid=sop_class or None,
            study_instance_uid=study_uid,
            transfer_syntax_uid=transfer_syntax,
        )
    log.warning(
        "rejected instance %s from %s with %s: %s",
        sop_uid or "?",
        calling_ae,
        dicom_status.describe(status),
        exc,
    )
    return status


def _internal_error(
    ctx: IngestContext,
    exc: Exception,
    calling_ae: str,
    peer: str,
    sop_uid: str,
    sop_class: str,
    study_uid: str | None,
) -> int:
    status = dicom_status.PROCESSING_FAILURE
    with suppress(Exception):
        ctx.repo.record_unstored(
            outcome=InstanceOutcome.REJECTED,
            status=status,
            reason=f"internal error: {type(exc).__name__}",
            calling_ae=calling_ae,
            peer=peer,
            sop_instance_uid=sop_uid or None,
            sop_class_uid=sop_class or None,
            study_instance_uid=study_uid,
        )
    log.error(
        "internal error storing %s from %s (%s); answered %s",
        sop_uid or "?",
        calling_ae,
        type(exc).__name__,
        dicom_status.describe(status),
    )
    log.debug("internal error details:\n%s", phi.traceback_text(exc))
    return status


def handle_accepted(event: Any, ctx: IngestContext) -> None:
    """Record an accepted association."""
    metrics.ASSOCIATIONS.labels("accepted").inc()
    calling_ae, peer = _peer(event)
    contexts = event.assoc.accepted_contexts
    with suppress(Exception):  # audit is best effort here; the association goes on
        ctx.repo.record_event(
            "association.accepted",
            calling_ae=calling_ae,
            detail=f"peer {peer}; {len(contexts)} presentation context(s) accepted",
        )


def _host_matches(rule: AllowedCallingAE, address: str) -> bool:
    if rule.host is None:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    network = rule.network
    if network is not None:
        return ip in network
    try:  # a host name: whatever it resolves to now
        resolved = {info[4][0] for info in socket.getaddrinfo(rule.host, None)}
    except OSError:
        return False
    return str(ip) in resolved


def calling_ae_allowed(
    rules: Sequence[AllowedCallingAE], calling_ae: str, address: str
) -> bool | None:
    """Whether ``calling_ae`` may call from ``address``: True, False (a listed title from
    another host), or None (the title is not listed at all). No rules: anyone may call."""
    if not rules:
        return True
    mine = [rule for rule in rules if rule.ae_title == calling_ae]
    if not mine:
        return None
    return any(_host_matches(rule, address) for rule in mine)


def rejection_reason(called_ae: str, calling_ae: str, address: str, ctx: IngestContext) -> str:
    """Why an association was rejected, in the words of PS3.8 Table 9-21."""
    if called_ae != ctx.ae_title:
        return f"called AE title not recognised (asked for {called_ae!r}, we are {ctx.ae_title!r})"
    allowed = calling_ae_allowed(ctx.allowed_calling_aes, calling_ae, address)
    if allowed is None:
        return "calling AE title not recognised (not in CAD_NODE_ALLOWED_CALLING_AES)"
    if not allowed:
        hosts = ", ".join(
            str(rule.host) for rule in ctx.allowed_calling_aes if rule.ae_title == calling_ae
        )
        return (
            f"calling AE title not recognised (allowed only from {hosts} by"
            f" CAD_NODE_ALLOWED_CALLING_AES, called from {address})"
        )
    return "local limit exceeded or no reason given"


def handle_requested(event: Any, ctx: IngestContext) -> None:
    """Reject an allowed calling AE title that calls from a host it is not pinned to.

    Titles not listed at all are left to pynetdicom (``require_calling_aet``), which rejects
    them the same way: calling AE title not recognised.
    """
    requestor = event.assoc.requestor
    called_ae = str(requestor.primitive.called_ae_title).strip()
    calling_ae = str(requestor.primitive.calling_ae_title).strip()
    if called_ae != ctx.ae_title:
        return  # pynetdicom rejects it: called AE title not recognised
    if calling_ae_allowed(ctx.allowed_calling_aes, calling_ae, str(requestor.address)) is False:
        requestor.ae_title = calling_ae  # as pynetdicom's own negotiation would have set it
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user
        evt.trigger(event.assoc, evt.EVT_REJECTED, {})
        event.assoc.kill()


def handle_rejected(event: Any, ctx: IngestContext) -> None:
    """Record and log a rejected association with its reason."""
    metrics.ASSOCIATIONS.labels("rejected").inc()
    calling_ae, peer = _peer(event)
    called_ae = str(event.assoc.requestor.primitive.called_ae_title).strip()
    reason = rejection_reason(called_ae, calling_ae, str(event.assoc.requestor.address), ctx)
    with suppress(Exception):
        ctx.repo.record_event(
            "association.rejected",
            level="warning",
            calling_ae=calling_ae,
            detail=f"peer {peer}; {reason}",
        )
    ctx.atna.association_rejected(calling_ae, peer, reason)
    log.warning("rejected association from %s (%s): %s", calling_ae, peer, reason)


def handle_aborted(event: Any, ctx: IngestContext) -> None:
    """Record an aborted association (a transfer in progress is discarded, not acknowledged)."""
    metrics.ASSOCIATIONS.labels("aborted").inc()
    calling_ae, peer = _peer(event)
    with suppress(Exception):
        ctx.repo.record_event(
            "association.aborted", level="warning", calling_ae=calling_ae, detail=f"peer {peer}"
        )
    log.warning("association from %s (%s) aborted", calling_ae, peer)


def record_connection_event(ctx: IngestContext, kind: str, peer: str, reason: str) -> None:
    """Record and log a connection the transport refused or dropped (no AE title known yet)."""
    with suppress(Exception):
        ctx.repo.record_event(kind, level="warning", detail=f"peer {peer}; {reason}")
    log.warning("%s from %s: %s", kind, peer, reason)


def handle_connection_closed(event: Any, ctx: IngestContext) -> None:
    """Report what the association stored (ATNA); remove the partial file of a transfer cut
    off mid-way (abort or dropped connection)."""
    ctx.atna.association_ended(event.assoc)
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    with suppress(OSError):
        partial.close()
    path = Path(partial.name)
    if path.parent == ctx.spool.incoming and path.exists():
        with suppress(OSError):
            path.unlink()
            log.info("discarded a partial transfer from a closed connection")
