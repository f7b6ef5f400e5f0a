"""A real pynetdicom storage SCP that plays a PACS in tests, and records what it receives."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def dataset_bytes(path: Path) -> bytes:
    """A DICOM file's dataset bytes (after preamble and file meta), as C-STORE carries them."""
    meta = read_file_meta_info(path)
    return path.read_bytes()[128 + 4 + 12 + int(meta.FileMetaInformationGroupLength) :]


def _wire_bytes(event: Any) -> bytes:
    try:
        path = event.dataset_path  # a file in chunked mode (our own SCP sets it process-wide)
    except AttributeError:
        path = None
    if path is None:
        return bytes(event.request.DataSet.getvalue())
    return dataset_bytes(Path(path))


@dataclass
class Receiver:
    """A running SCP; ``received`` lists SOP Instance UIDs in arrival order, ``digests`` the
    SHA-256 of each dataset's bytes as they came over the wire, in the same order."""

    ae_title: str
    port: int
    server: Any
    received: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    """The Study Instance UID of each object, in the same order."""
    on_store: Callable[[str], None] | None = None
    """Called with each SOP Instance UID once recorded, before the response is sent."""
    status: int = 0x0000
    """The C-STORE status it answers (a test sets a refusal or a warning)."""

    def stop(self) -> None:
        self.server.shutdown()


def start_receiver(
    ae_title: str = "PACS", port: int = 0, require_calling_aet: list[str] | None = None
) -> Receiver:
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    if require_calling_aet:
        ae.require_calling_aet = require_calling_aet
    receiver = Receiver(ae_title, port, None)

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        receiver.digests.append(hashlib.sha256(_wire_bytes(event)).hexdigest())
        receiver.studies.append(str(event.dataset.get("StudyInstanceUID", "")))
        receiver.received.append(uid)
        if receiver.on_store is not None:
            receiver.on_store(uid)
        return receiver.status

    receiver.server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    receiver.port = int(receiver.server.server_address[1])
    return receiver
