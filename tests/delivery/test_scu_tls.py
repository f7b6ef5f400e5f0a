"""The SCU over TLS, sending to dcmtk's ``storescp +tls``: certificates, host names, client
certificates, and the reason given when TLS fails."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import Issued, TlsFiles
from factories import mammogram, write
from helpers import require_dcmtk
from pydicom import dcmread
from services import free_port, wait_until

from cad_node.delivery.scu import send_files
from cad_node.settings import Destination

StoreSCP = Callable[..., tuple[int, Path]]


@pytest.fixture
def tls_storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """Start dcmtk's storescp +tls with a server certificate and a peer-certificate mode."""
    storescp = require_dcmtk("storescp")
    procs: list[subprocess.Popen[bytes]] = []

    def start(server: Issued, ca: Path, peer_cert: str = "-rc") -> tuple[int, Path]:
        port, received = free_port(), tmp_path / f"received-{len(procs)}"
        received.mkdir()
        args = [storescp, "+tls", str(server.key), str(server.cert), "+cf", str(ca), peer_cert]
        args += ["-aet", "TLSPACS", "-od", str(received), str(port)]
        procs.append(
            subprocess.Popen(
                args,
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(
            lambda: socket.create_connection(("127.0.0.1", port), 1).close() or 1, 15, "storescp"
        )
        return port, received

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _send(port: int, tmp_path: Path, **tls: Any) -> tuple[Any, Path]:
    ds = mammogram()
    path = write(ds, tmp_path / "out")
    destination = Destination(ae_title="TLSPACS", host="127.0.0.1", port=port, tls=True, **tls)
    (outcome,) = send_files(destination, [path], calling_ae="CADNODE", timeout=10)
    return outcome, path


def _received(folder: Path) -> list[str]:
    return [str(dcmread(f).SOPInstanceUID) for f in folder.iterdir()]


def test_mutual_tls_delivery(tls_storescp: StoreSCP, tls_files: TlsFiles, tmp_path: Path) -> None:
    port, received = tls_storescp(tls_files.server, tls_files.ca.bundle, "-rc")
    outcome, _ = _send(
        port,
        tmp_path,
        tls_ca=tls_files.ca.bundle,
        tls_cert=tls_files.client.cert,
        tls_key=tls_files.client.key,
    )
    assert outcome.delivered, outcome.error
    assert _received(received) == [outcome.sop_instance_uid]


def test_a_peer_that_wants_a_client_certificate_refuses_us_without_one(
    tls_storescp: StoreSCP, tls_files: TlsFiles, tmp_path: Path
) -> None:
    port, received = tls_storescp(tls_files.server, tls_files.ca.bundle, "-rc")
    outcome, _ = _send(port, tmp_path, tls_ca=tls_files.ca.bundle)
    assert not outcome.delivered and outcome.error
    assert _received(received) == []


def test_an_untrusted_peer_certificate_is_refused(
    tls_storescp: StoreSCP, tls_files: TlsFiles, tmp_path: Path
) -> None:
    port, received = tls_storescp(tls_files.server, tls_files.ca.bundle, "-ic")
    outcome, _ = _send(port, tmp_path, tls_ca=tls_files.stranger_ca.bundle)
    assert outcome.error is not None and not outcome.delivered
    assert outcome.error.startswith("TLS handshake failed: certificate verify failed")
    assert _received(received) == []


def test_the_host_name_is_checked_unless_configured_otherwise(
    tls_storescp: StoreSCP, tls_files: TlsFiles, tmp_path: Path
) -> None:
    port, received = tls_storescp(tls_files.other_host, tls_files.ca.bundle, "-ic")
    outcome, _ = _send(port, tmp_path, tls_ca=tls_files.ca.bundle)
    assert outcome.error is not None and "mismatch" in outcome.error.lower()
    relaxed, _ = _send(port, tmp_path, tls_ca=tls_files.ca.bundle, tls_check_hostname=False)
    assert relaxed.delivered, relaxed.error
    assert _received(received) == [relaxed.sop_instance_uid]


def test_a_missing_ca_file_fails_the_send_with_its_name(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    outcome, _ = _send(free_port(), tmp_path, tls_ca=tmp_path / "missing-ca.pem")
    assert outcome.error is not None
    assert "TLS set-up failed" in outcome.error and "missing-ca.pem" in outcome.error
