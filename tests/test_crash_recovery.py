"""`cad-node serve` killed with SIGKILL after acknowledging images loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from factories import four_views
from scu import associate, store

from cad_node import dicom_status
from cad_node.audit.db import make_engine
from cad_node.audit.repository import AuditRepository

CAD_NODE = str(Path(sys.executable).parent / "cad-node")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, data_dir: Path, quiet: float) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.env = {
            **os.environ,
            "CAD_NODE_DATA_DIR": str(data_dir),
            "CAD_NODE_HOST": "127.0.0.1",
            "CAD_NODE_PORT": str(self.port),
            "CAD_NODE_STUDY_QUIET_SECONDS": str(quiet),
            "CAD_NODE_MIN_FREE_MB": "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Output goes to a file: an unread pipe would block the node once it fills.
        self.log = (self.data_dir.parent / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [CAD_NODE, "serve"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(self._listening, timeout=30, interval=0.2)

    def _listening(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "serve exited"
        assoc = associate(self.port)
        ok = assoc.is_established
        if ok:
            assoc.release()
        return ok

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "data", quiet=3.0)
    yield process
    process.terminate()


def test_sigkill_after_acknowledgement_loses_nothing(serve: ServeProcess, tmp_path: Path) -> None:
    serve.start()
    views = four_views()
    assert store(serve.port, views) == [dicom_status.SUCCESS] * 4
    serve.kill()  # within the quiet period: the study is still "receiving"

    spool = tmp_path / "data" / "spool"
    uid = views[0].StudyInstanceUID
    for ds in views:
        assert (spool / uid / f"{ds.SOPInstanceUID}.dcm").stat().st_size > 0
    # A transfer cut by the crash left a partial file behind.
    (tmp_path / "data" / "incoming" / "tmpcrashed.dcm").write_bytes(b"partial")

    serve.start()
    repo = AuditRepository(make_engine(f"sqlite:///{tmp_path / 'data' / 'cad-node.db'}"))
    study = wait_for(
        lambda: (s := repo.show_study(uid)) and s["status"] == "complete" and s, timeout=10
    )
    assert study["views"] == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert [i["outcome"] for i in study["instances"]] == ["stored"] * 4
    assert not (tmp_path / "data" / "incoming" / "tmpcrashed.dcm").exists()
    kinds = [e["kind"] for e in repo.recent_events(100)]
    assert "node.recovered" in kinds
    # No model is installed here: the node says so once, at start-up.
    assert "no model installed" in (tmp_path / "serve.log").read_text()
