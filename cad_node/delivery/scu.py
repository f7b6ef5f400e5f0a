"""C-STORE SCU: one association per destination, proposing exactly what is being sent."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from cad_node import dicom_net, dicom_status
from cad_node.errors import ConfigError
from cad_node.settings import Destination

log = logging.getLogger(__name__)

_SUCCESS_OR_WARNING = {
    dicom_status.SUCCESS,
    dicom_status.WARNING_COERCION,
    dicom_status.WARNING_ELEMENTS_DISCARDED,
    dicom_status.WARNING_DATASET_MISMATCH,
}
"""C-STORE statuses meaning the peer stored the object (PS3.4 Table B.2-1)."""


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one object."""

    path: Path
    sop_instance_uid: str
    status: int | None
    """The peer's C-STORE status; None when no response came (no association, abort...)."""
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status in _SUCCESS_OR_WARNING


def _describe_rejection(assoc: object) -> str:
    acceptor = getattr(assoc, "acceptor", None)
    primitive = getattr(acceptor, "primitive", None)
    diagnostic = getattr(primitive, "diagnostic", None)
    reasons = {
        1: "no reason given",
        2: "application context not supported",
        3: "calling AE title (ours) not recognised",
        7: "called AE title not recognised",
    }
    if diagnostic is None:
        return "association rejected"
    return f"association rejected: {reasons.get(int(diagnostic), f'reason {diagnostic}')}"


def send_files(
    destination: Destination,
    files: Sequence[Path],
    *,
    calling_ae: str,
    timeout: float = 30.0,
) -> list[SendOutcome]:
    """Send ``files`` over one association; one outcome per file, never an exception.

    A file that cannot be read is that file's failure; the others are still sent. A TLS
    destination's certificate and host name are checked unless its settings say otherwise.
    """
    outcomes: dict[int, SendOutcome] = {}
    headers: list[tuple[int, Path, Dataset]] = []
    for i, path in enumerate(files):
        try:
            headers.append((i, path, dcmread(path, stop_before_pixels=True)))
        except Exception as exc:  # missing, truncated or not DICOM
            outcomes[i] = SendOutcome(path, path.stem, None, f"unreadable: {type(exc).__name__}")

    def in_order() -> list[SendOutcome]:
        return [outcomes[i] for i in range(len(files))]

    def all_failed(reason: str) -> list[SendOutcome]:
        for i, path, ds in headers:
            outcomes[i] = SendOutcome(path, str(ds.SOPInstanceUID), None, reason)
        return in_order()

    if not headers:
        return in_order()
    contexts: dict[str, set[str]] = defaultdict(set)
    for _, _, ds in headers:
        contexts[str(ds.SOPClassUID)].add(str(ds.file_meta.TransferSyntaxUID))
    ae = dicom_net.requesting_ae(calling_ae, timeout=timeout)
    for sop_class, syntaxes in sorted(contexts.items()):
        ae.add_requested_context(sop_class, sorted(syntaxes))
    try:  # read for each send: a renewed certificate is used without a restart
        tls_args = dicom_net.tls_arguments(destination)
    except ConfigError as exc:
        return all_failed(f"TLS set-up failed: {exc}")
    context = None if tls_args is None else tls_args[0]
    try:
        assoc = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
    except Exception as exc:  # DNS failures and the like
        return all_failed(f"cannot connect: {type(exc).__name__}")
    if assoc.is_rejected:
        return all_failed(_describe_rejection(assoc))
    if not assoc.is_established:
        if context is not None and context.failure:
            return all_failed(f"TLS handshake failed: {context.failure}")
        return all_failed("cannot connect or association aborted")
    try:
        for i, path, header in headers:
            uid = str(header.SOPInstanceUID)
            if not assoc.is_established:
                outcomes[i] = SendOutcome(path, uid, None, "association lost")
                continue
            try:
                response = assoc.send_c_store(dcmread(path))
            except Exception as exc:
                outcomes[i] = SendOutcome(path, uid, None, f"send failed: {type(exc).__name__}")
                continue
            status = int(response.Status) if "Status" in response else None
            error = None
            if status is None:
                error = "no response (timeout or abort)"
            elif status not in _SUCCESS_OR_WARNING:
                error = f"refused with status 0x{status:04X}"
            outcomes[i] = SendOutcome(path, uid, status, error)
    finally:
        if assoc.is_established:
            assoc.release()
    return in_order()
