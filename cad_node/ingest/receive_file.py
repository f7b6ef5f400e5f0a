"""The file pynetdicom streams an incoming C-STORE dataset into.

pynetdicom writes received P-DATA straight to a temporary file from its reactor thread. A write
that fails there (disk full) would kill the association without a status and leave the partial
file filling the disk. This file instead remembers the failure, truncates itself to give the
space back and swallows further writes; the C-STORE handler then answers 0xA700 (out of
resources) and the peer can retry later. Installed by :func:`install`.
"""

from __future__ import annotations

import tempfile
from contextlib import suppress
from typing import Any

import pynetdicom.dimse_messages


class ReceivingFile:
    """A named temporary file whose write errors are recorded instead of raised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - owned
        self.name: str = self._file.name
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with suppress(OSError):
            self._file.truncate(0)

    def close(self) -> None:
        with suppress(OSError):
            self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_error(request: Any) -> OSError | None:
    """The error that interrupted receiving ``request``'s dataset, if any."""
    received = getattr(request, "_dataset_file", None)
    return received.error if isinstance(received, ReceivingFile) else None


def install() -> None:
    """Make pynetdicom receive datasets through :class:`ReceivingFile`."""
    if not hasattr(pynetdicom.dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("pynetdicom no longer streams through NamedTemporaryFile")
    pynetdicom.dimse_messages.NamedTemporaryFile = ReceivingFile  # type: ignore[attr-defined]
