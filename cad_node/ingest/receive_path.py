"""The receive path of the storage SCP: the file a C-STORE dataset streams into.

pynetdicom is used as it is, with that file replaced by :func:`install` (same contract, checked
by the ingest tests). The socket reads are :mod:`cad_node.ingest.transport`'s, for our server's
connections only.

pynetdicom writes received P-DATA straight to a temporary file from its reactor thread. A write
that fails there (disk full) would kill the association without a status and leave the partial
file filling the disk. This file instead remembers the failure, truncates itself to give the
space back and swallows further writes; the C-STORE handler then answers 0xA700 (out of
resources) and the peer can retry later. Installed by :func:`install`.

It also does, while the bytes arrive, the work that would otherwise delay the answer: a thread
of its own hashes them (SHA-256; hashlib releases the GIL, so this runs beside the socket
thread on another core), and the kernel is asked to start writing them back, so that the fsync
before Success has little left to flush.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import queue
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pynetdicom.dimse_messages

_incoming: Path | None = None
"""Where received datasets are written (the spool's incoming folder, same filesystem as the
spool so acknowledging is a rename); None: the system's temporary folder."""

WRITEBACK_BYTES = 8 * 2**20
"""Start kernel writeback each time this much new data has been flushed."""
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, 0, 0, WRITE)``: start writeback without waiting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    func = getattr(libc, "sync_file_range", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        func(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_start_writeback = _load_sync_file_range()


class ReceivingFile:
    """A named temporary file that hashes what it receives and records write errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _incoming is not None and _incoming.is_dir():
            kwargs["dir"] = _incoming
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - owned
        self._raw = self._file.file  # skip the wrapper's per-call attribute forwarding
        self.name: str = self._file.name
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._synced = 0
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._hasher: threading.Thread | None = threading.Thread(
            target=self._hash_chunks, name="receive-sha256", daemon=True
        )
        self._hasher.start()

    def _hash_chunks(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._sha256.update(chunk)

    def _finish_hashing(self) -> None:
        if self._hasher is not None:
            self._chunks.put(None)
            self._hasher.join()
            self._hasher = None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of every byte written (waits for the hashing thread to catch up)."""
        self._finish_hashing()
        return self._sha256.hexdigest()

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                written = self._raw.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._chunks.put(data if isinstance(data, bytes) else bytes(data))
                self._size += len(data)
                return written
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._raw.flush()
            except OSError as exc:
                self._fail(exc)
                return
            if _start_writeback and self._size - self._synced >= WRITEBACK_BYTES:
                _start_writeback(self._file.fileno(), self._synced, self._size - self._synced)
                self._synced = self._size

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with suppress(OSError):
            self._file.truncate(0)

    def close(self) -> None:
        self._finish_hashing()
        with suppress(OSError):
            self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def receiving_file(request: Any) -> ReceivingFile | None:
    """The file ``request``'s dataset was received into, when it went through this module."""
    received = getattr(request, "_dataset_file", None)
    return received if isinstance(received, ReceivingFile) else None


def install(incoming: Path) -> None:
    """Replace pynetdicom's C-STORE receive file with :class:`ReceivingFile`.

    Received datasets go to ``incoming``; nothing else in the process is affected.
    """
    global _incoming
    _incoming = incoming
    if not hasattr(pynetdicom.dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("pynetdicom no longer streams through NamedTemporaryFile")
    pynetdicom.dimse_messages.NamedTemporaryFile = ReceivingFile  # type: ignore[attr-defined]


def release(incoming: Path) -> None:
    """Stop writing into ``incoming`` (a stopped node's folder may disappear)."""
    global _incoming
    if _incoming == incoming:
        _incoming = None
