"""The spool (ingest/spool.py): durable commits under the instance's name, on real files."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cad_node.errors import MissingUidError, OutOfResourcesError
from cad_node.ingest.spool import Spool, is_out_of_space


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", tmp_path / "incoming")
    spool.prepare()
    return spool


def _received(spool: Spool, data: bytes) -> Path:
    path = spool.incoming / f"part-{generate_uid()}"
    path.write_bytes(data)
    return path


def test_commit_moves_the_file_under_study_and_instance_and_describes_it(spool: Spool) -> None:
    study, sop = generate_uid(), generate_uid()
    data = os.urandom(5000)
    received = _received(spool, data)
    stored = spool.commit(received, study, sop, ExplicitVRLittleEndian)
    assert stored.path == f"{study}/{sop}.dcm"
    assert spool.path_of(stored.path).read_bytes() == data
    assert not received.exists()
    assert stored.bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.transfer_syntax_uid == ExplicitVRLittleEndian


def test_a_digest_computed_while_receiving_is_kept(spool: Spool) -> None:
    received = _received(spool, b"some bytes")
    stored = spool.commit(received, generate_uid(), generate_uid(), "1.2", sha256="ab" * 32)
    assert stored.sha256 == "ab" * 32


def test_the_file_is_synced_before_its_rename_and_the_folder_after(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fsync and rename run; the test notes what each was applied to, in order."""
    steps: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        steps.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    study, sop = generate_uid(), generate_uid()
    received = _received(spool, b"instance")
    spool.commit(received, study, sop, "1.2")
    study_dir = str((spool.root / study).resolve())
    synced = [target for step, target in steps if step == "fsync"]
    assert steps.index(("fsync", str(received.resolve()))) < steps.index(("replace", str(received)))
    assert synced[-1] == study_dir  # the rename itself made durable
    assert str(spool.root.resolve()) in synced  # and the new study folder's name


def test_a_second_copy_of_an_instance_replaces_the_first_whole(spool: Spool) -> None:
    study, sop = generate_uid(), generate_uid()
    spool.commit(_received(spool, b"first"), study, sop, "1.2")
    stored = spool.commit(_received(spool, b"second copy"), study, sop, "1.2")
    assert spool.path_of(stored.path).read_bytes() == b"second copy"
    assert [p.name for p in (spool.root / study).iterdir()] == [f"{sop}.dcm"]


@pytest.mark.parametrize("uid", ["", "../1.2", "1.2/3", ".1.2", "1.2.abc"])
def test_a_uid_that_could_leave_the_spool_is_refused(spool: Spool, uid: str) -> None:
    received = _received(spool, b"x")
    with pytest.raises(MissingUidError):
        spool.commit(received, uid, generate_uid(), "1.2")
    with pytest.raises(MissingUidError):
        spool.commit(received, generate_uid(), uid, "1.2")
    assert received.exists()  # nothing was moved
    assert list(spool.root.iterdir()) == []


def test_prepare_removes_partial_transfers_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "incoming")
    assert spool.prepare() == 0
    kept = spool.commit(_received(spool, b"kept"), generate_uid(), generate_uid(), "1.2")
    for _ in range(2):
        _received(spool, b"cut short")
    assert spool.prepare() == 2
    assert list(spool.incoming.iterdir()) == []
    assert spool.path_of(kept.path).read_bytes() == b"kept"


def test_below_the_free_space_reserve_storing_is_refused_as_retryable(spool: Spool) -> None:
    spool.check_space()  # no reserve
    spool.min_free_bytes = shutil.disk_usage(spool.root).free + 2**40
    with pytest.raises(OutOfResourcesError, match="below the reserve") as caught:
        spool.check_space()
    assert caught.value.retryable


def test_out_of_space_means_a_full_disk_or_quota_only() -> None:
    assert is_out_of_space(OSError(errno.ENOSPC, "full"))
    assert is_out_of_space(OSError(errno.EDQUOT, "quota"))
    assert not is_out_of_space(OSError(errno.EACCES, "denied"))
