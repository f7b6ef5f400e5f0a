"""The spool: where acknowledged instances live, written so that none is ever lost.

A received file is fsynced, then atomically renamed to ``spool/<study>/<sop>.dcm``, and the
directory entry is fsynced too; only then may the node record it and answer Success. Partial
transfers stay in ``incoming/`` (same filesystem, so the rename is atomic) and are removed at
start-up and when an association breaks off.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path

from cad_node.domain import StoredFile
from cad_node.errors import MissingUidError, OutOfResourcesError
from cad_node.fsutil import ensure_dir_durably, fsync_dir

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _safe_uid(uid: str) -> str:
    # UIDs are digits and dots (checked before); refuse anything that could leave the spool.
    if not uid or not all(c.isdigit() or c == "." for c in uid) or uid.startswith("."):
        raise MissingUidError("UID unusable as a file name")
    return uid


def is_out_of_space(exc: OSError) -> bool:
    """True when an OS error means the disk (or quota) is full."""
    return exc.errno in _NO_SPACE


class Spool:
    """Durable, deduplicated storage of received instances on the local filesystem."""

    def __init__(self, root: Path, incoming: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.incoming = incoming
        self.min_free_bytes = min_free_bytes

    def prepare(self) -> int:
        """Create the folders and delete partial transfers left by a crash; returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.incoming.iterdir():
            if leftover.is_file():
                leftover.unlink()
                removed += 1
        return removed

    def check_space(self) -> None:
        """Raise :class:`OutOfResourcesError` when free space is below the reserve."""
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise OutOfResourcesError(
                f"free space {free // 2**20} MiB is below the reserve "
                f"{self.min_free_bytes // 2**20} MiB"
            )

    def relative_path(self, study_uid: str, sop_uid: str) -> str:
        """The spool-relative path of an instance."""
        return f"{_safe_uid(study_uid)}/{_safe_uid(sop_uid)}.dcm"

    def path_of(self, relative: str) -> Path:
        """The absolute path of a spool-relative path."""
        return self.root / relative

    def commit(
        self,
        received: Path,
        study_uid: str,
        sop_uid: str,
        transfer_syntax: str,
        *,
        sha256: str | None = None,
    ) -> StoredFile:
        """Make a received file durable under its final name and return what was stored.

        ``sha256`` is the file's digest when the receiver already computed it while the bytes
        arrived; otherwise it is computed here. Raises :class:`OutOfResourcesError` when the
        disk is full.
        """
        relative = self.relative_path(study_uid, sop_uid)
        final = self.root / relative
        try:
            with open(received, "rb") as fh:
                digest = sha256 or hashlib.file_digest(fh, "sha256").hexdigest()
                size = os.fstat(fh.fileno()).st_size
                os.fsync(fh.fileno())
            study_dir = final.parent
            ensure_dir_durably(study_dir)
            os.replace(received, final)
            fsync_dir(study_dir)
        except OSError as exc:
            if is_out_of_space(exc):
                raise OutOfResourcesError("disk full while storing") from exc
            raise
        return StoredFile(
            path=relative, bytes=size, sha256=digest, transfer_syntax_uid=transfer_syntax
        )
