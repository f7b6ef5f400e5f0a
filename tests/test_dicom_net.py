"""The AE factory: real associations on loopback between the listening and requesting AEs."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TlsFiles
from helpers import make_settings, wait_for
from pynetdicom.association import Association
from services import free_port

from cad_node import dicom_net
from cad_node.errors import ConfigError
from cad_node.ingest.transport import A_ABORT_INVALID_PARAMETER
from cad_node.settings import Destination
from cad_node.sop_classes import VERIFICATION

Start = Callable[..., tuple[list[tuple[str, str, str]], dict[str, int]]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start the listening AE (Verification only) on every listener the settings give;
    returns what its transport reported and the port of each listener."""
    servers: list[Any] = []

    def run(**overrides: Any) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
        settings = make_settings(tmp_path / "data", **overrides)
        reports: list[tuple[str, str, str]] = []
        ae = dicom_net.listening_ae(settings, lambda *event: reports.append(event))
        ae.add_supported_context(VERIFICATION)
        ports = {}
        for listener in dicom_net.listeners(settings):
            server = ae.start_server(
                listener.address, block=False, ssl_context=listener.ssl_context
            )
            servers.append(server)
            ports[listener.name] = int(server.server_address[1])
        return reports, ports

    yield run
    for server in servers:
        server.shutdown()


def _echo(port: int, *, calling: str = "SCU", called: str = "CADNODE", **kw: Any) -> Association:
    ae = dicom_net.requesting_ae(calling, timeout=5)
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", port, ae_title=called, **kw)


def _echo_status(assoc: Association) -> int | None:
    try:
        if not assoc.is_established:
            return None
        return int(assoc.send_c_echo().Status)
    finally:
        if assoc.is_established:
            assoc.release()


def test_an_echo_between_the_two_kinds_of_ae(start: Start) -> None:
    _, ports = start(max_pdu=65536)
    assoc = _echo(ports["plain"])
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 65536  # what the listening AE announced
    assert _echo_status(assoc) == 0x0000


def test_the_listening_ae_checks_called_and_calling_titles(start: Start) -> None:
    _, ports = start(allowed_calling_aes="MODALITY")
    assert _echo(ports["plain"], called="SOMEONE").is_rejected
    assert _echo(ports["plain"], calling="INTRUDER").is_rejected
    assert _echo_status(_echo(ports["plain"], calling="MODALITY")) == 0x0000


def test_the_listening_ae_closes_a_silent_connection_after_the_acse_timeout(start: Start) -> None:
    _, ports = start(acse_timeout_seconds=1)
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", ports["plain"]), timeout=10) as silent:
        assert silent.recv(1) == b""  # closed by the node, not by our timeout
    assert 0.5 < time.monotonic() - began < 5


def test_the_listening_ae_reads_through_the_pdu_guard(start: Start) -> None:
    reports, ports = start()
    with socket.create_connection(("127.0.0.1", ports["plain"]), timeout=10) as peer:
        peer.sendall(struct.pack(">BBL", 0x04, 0, 1 << 30))  # a 1 GiB P-DATA-TF, first
        assert peer.recv(16) == A_ABORT_INVALID_PARAMETER
    [(kind, _, reason)] = wait_for(lambda: reports)
    assert kind == "connection.refused" and "declares 1073741824 bytes" in reason


def test_the_requesting_ae_gives_up_on_a_peer_that_never_answers() -> None:
    with socket.socket() as mute:  # accepts connections (the backlog) but never speaks
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        ae = dicom_net.requesting_ae("SCU", timeout=1)
        ae.add_requested_context(VERIFICATION)
        began = time.monotonic()
        assoc = ae.associate("127.0.0.1", mute.getsockname()[1], ae_title="MUTE")
        assert not assoc.is_established
        assert time.monotonic() - began < 5
    assert dicom_net.requesting_ae("SCU", timeout=30).connection_timeout == (
        dicom_net.CONNECT_TIMEOUT_MAX
    )


def _tls_settings(tls_files: TlsFiles, **overrides: Any) -> dict[str, Any]:
    return {
        "tls_port": free_port(),
        "tls_cert": tls_files.server.cert,
        "tls_key": tls_files.server.key,
        "tls_ca": tls_files.ca.bundle,
        **overrides,
    }


def test_mutual_tls_between_the_two_kinds_of_ae(start: Start, tls_files: TlsFiles) -> None:
    _, ports = start(**_tls_settings(tls_files))
    assert set(ports) == {"plain", "tls"}
    trusted = Destination(
        ae_title="CADNODE",
        host="127.0.0.1",
        port=ports["tls"],
        tls=True,
        tls_ca=tls_files.ca.bundle,
        tls_cert=tls_files.client.cert,
        tls_key=tls_files.client.key,
    )
    args = dicom_net.tls_arguments(trusted)
    assert args is not None and args[1] == "127.0.0.1"
    assert _echo_status(_echo(ports["tls"], tls_args=args)) == 0x0000
    anonymous = trusted.model_copy(update={"tls_cert": None, "tls_key": None})
    refused = dicom_net.tls_arguments(anonymous)
    assert refused is not None
    assert not _echo(ports["tls"], tls_args=refused).is_established
    assert not _echo(ports["tls"]).is_established  # plain DICOM on the TLS port


def test_tls_only_gives_one_listener(start: Start, tls_files: TlsFiles) -> None:
    _, ports = start(**_tls_settings(tls_files, tls_only=True, tls_ca=None))
    assert list(ports) == ["tls"]


def test_bad_tls_files_fail_when_the_listeners_are_made(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, tls_port=free_port(), tls_cert=tmp_path / "none.pem", tls_key=tmp_path / "k.pem"
    )
    with pytest.raises(ConfigError, match="CAD_NODE_TLS_CERT"):
        dicom_net.listeners(settings)
    destination = Destination(
        ae_title="PACS", host="127.0.0.1", port=1, tls=True, tls_ca=tmp_path / "none.pem"
    )
    with pytest.raises(ConfigError, match="tls_ca"):
        dicom_net.tls_arguments(destination)
    assert dicom_net.tls_arguments(destination.model_copy(update={"tls": False})) is None
