"""Real services for end-to-end tests: Redis, Orthanc, `cad-node serve` and `cad-node worker`.

Each runs as a separate process on a free loopback port and is stopped by its fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CAD_NODE = str(Path(sys.executable).parent / "cad-node")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout} s")


class Process:
    """A child process in its own session, so kill() takes its children too."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log_path = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, not a shutdown)."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Redis(Process):
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        super().__init__(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            dict(os.environ),
            folder / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        import redis

        wait_until(lambda: redis.Redis(port=self.port).ping(), 15, "redis-server")


class Orthanc(Process):
    """Orthanc as the PACS: DICOM on one port, REST on another, config in a temp folder."""

    AE = "ORTHANC"

    def __init__(
        self,
        folder: Path,
        modalities: dict[str, tuple[str, int]],
        *,
        options: dict[str, Any] | None = None,
        tls_modalities: tuple[str, ...] = (),
    ) -> None:
        """``options`` are added to the configuration (e.g. ``DicomTls*``); the modalities
        named in ``tls_modalities`` are called over TLS."""
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cad-node test PACS",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                name: {
                    "AET": ae,
                    "Host": "127.0.0.1",
                    "Port": port,
                    **({"UseDicomTls": True} if name in tls_modalities else {}),
                }
                for name, (ae, port) in modalities.items()
            },
            "Plugins": [],
            "StableAge": 1,
            **(options or {}),
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        super().__init__(
            [binary, str(folder / "orthanc.json")], dict(os.environ), folder / "orthanc.log"
        )

    def start(self) -> None:
        super().start()
        wait_until(lambda: self.get("/system"), 30, "Orthanc")

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        return data if path.endswith("/file") else json.loads(data or b"null")

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._request("POST", path, payload)

    def upload(self, dicom_file: Path) -> str:
        """Store a file in Orthanc; returns its Orthanc study id."""
        return str(self.post("/instances", dicom_file.read_bytes())["ParentStudy"])

    def push_study(self, modality: str, study_id: str) -> Any:
        """Orthanc sends a whole study to a modality by C-STORE (as a PACS routing rule would)."""
        return self.post(
            f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": True}
        )

    def instances(self, study_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/studies/{study_id}/instances"))

    def file(self, instance_id: str) -> bytes:
        return bytes(self._request("GET", f"/instances/{instance_id}/file"))


def node_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAD_NODE_")}
    env.update(
        CAD_NODE_DATA_DIR=str(data_dir),
        CAD_NODE_HOST="127.0.0.1",
        CAD_NODE_PORT=str(port),
        CAD_NODE_MIN_FREE_MB="0",
        CAD_NODE_STUDY_QUIET_SECONDS="2",
        CAD_NODE_DELIVERY_SWEEP_SECONDS="1",
        CAD_NODE_DELIVERY_BACKOFF_SECONDS="1",
        CAD_NODE_HTTP_PORT=str(free_port()),  # each node its own web server, as in production
    )
    env.update(extra)
    return env


def serve(data_dir: Path, env: dict[str, str]) -> Process:
    return Process([CAD_NODE, "serve"], env, data_dir.parent / "serve.log")


def worker(data_dir: Path, env: dict[str, str], name: str = "worker") -> Process:
    return Process([CAD_NODE, "worker"], env, data_dir.parent / f"{name}.log")


def wait_listening(port: int, timeout: float = 30) -> None:
    from scu import associate

    def ready() -> bool:
        assoc = associate(port)
        ok = bool(assoc.is_established)
        if ok:
            assoc.release()
        return ok

    wait_until(ready, timeout, f"DICOM port {port}")
