"""A small pynetdicom SCU for tests: associate, store, and report statuses."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association

from cad_node.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION


def associate(
    port: int,
    *,
    calling: str = "TESTSCU",
    called: str = "CADNODE",
    transfer_syntaxes: list[str] | None = None,
) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    for sop_class in STORAGE_SOP_CLASSES:
        if transfer_syntaxes:
            ae.add_requested_context(sop_class, transfer_syntaxes)
        else:
            ae.add_requested_context(sop_class)
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(
    port: int, datasets: Iterable[Dataset | Path], *, calling: str = "TESTSCU", **kw: object
) -> list[int]:
    """Send each dataset (or file, sent byte-for-byte) over one association; the statuses."""
    items = list(datasets)
    syntaxes = sorted(
        {
            str(d.file_meta.TransferSyntaxUID)
            for d in items
            if isinstance(d, Dataset) and "TransferSyntaxUID" in d.file_meta
        }
    )
    assoc = associate(port, calling=calling, transfer_syntaxes=syntaxes or None, **kw)  # type: ignore[arg-type]
    assert assoc.is_established, "association was not established"
    statuses = []
    previous = _config.STORE_SEND_CHUNKED_DATASET
    try:
        for item in items:
            _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return statuses
