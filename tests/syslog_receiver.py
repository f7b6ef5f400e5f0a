"""A real syslog receiver for tests: Debian's rsyslogd, on loopback, with a temporary config.

It listens on UDP (RFC 5426) and on TLS (RFC 5425, rsyslog-gnutls) with a test CA made by
``openssl``, and writes every message it receives, raw and whole, one per line, to a file.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import IN_CI
from services import free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")


@dataclass
class SyslogReceiver:
    udp_port: int
    tls_port: int
    ca_file: Path
    output: Path
    process: subprocess.Popen[bytes]

    def lines(self) -> list[bytes]:
        """Every message received so far (raw bytes, newline-terminated in the file)."""
        if not self.output.exists():
            return []
        return [line for line in self.output.read_bytes().split(b"\n") if line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def require_rsyslog() -> None:
    """Missing rsyslogd (or its TLS driver) is a skip locally, a failure in CI."""
    if not Path(RSYSLOGD).exists() or not GTLS.exists():
        message = "rsyslog and rsyslog-gnutls not installed (scripts/bootstrap --test)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
            str(ca), "-days", "2", "-subj", "/CN=cad-node test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=localhost")  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


def start_rsyslog(folder: Path) -> SyslogReceiver:
    """Start ``rsyslogd -n`` with a config of its own; returns once its TLS port accepts."""
    require_rsyslog()
    folder.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_test_ca(folder / "pki")
    udp_port, tls_port = free_port(), free_port()
    output = folder / "received.log"
    (folder / "work").mkdir(exist_ok=True)
    config = folder / "rsyslog.conf"
    config.write_text(
        f"""
global(workDirectory="{folder / "work"}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="anon")
input(type="imudp" address="127.0.0.1" port="{udp_port}")
input(type="imtcp" address="127.0.0.1" port="{tls_port}")
template(name="whole" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{output}" template="whole" flushOnTXEnd="on" asyncWriting="off")
"""
    )
    process = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(config), "-i", str(folder / "rsyslogd.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    receiver = SyslogReceiver(udp_port, tls_port, ca, output, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rsyslogd exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
            time.sleep(0.2)  # the UDP input starts with the TCP one
            return receiver
        except OSError:
            time.sleep(0.1)
    receiver.stop()
    raise AssertionError("rsyslogd did not start listening")
