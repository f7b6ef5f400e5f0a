"""The SCP's TLS listener against dcmtk's echoscu/storescu +tls and raw TLS sockets."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from certs import TlsFiles
from factories import four_views, write
from helpers import require_dcmtk, wait_for
from services import free_port

from cad_node.node import Node


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _tls_node(factory: Callable[..., Node], files: TlsFiles, **overrides: Any) -> Node:
    values: dict[str, Any] = {
        "tls_port": free_port(),
        "tls_cert": files.server.cert,
        "tls_key": files.server.key,
    }
    values.update(overrides)
    return factory(**values)


def _echo(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    echoscu = require_dcmtk("echoscu")
    return _run(echoscu, *tls, "-aec", "CADNODE", "127.0.0.1", str(port))


def _client_tls(files: TlsFiles) -> tuple[str, ...]:
    return ("+tls", str(files.client.key), str(files.client.cert), "+cf", str(files.ca.bundle))


def _events(node: Node, kind: str) -> list[dict[str, Any]]:
    return [e for e in node.repo.recent_events(level="warning") if e.kind == kind]


def test_echoscu_and_storescu_over_tls(
    node_factory: Callable[..., Node], tls_files: TlsFiles, tmp_path: Path
) -> None:
    node = _tls_node(node_factory, tls_files)
    assert node.scp.tls_port is not None and node.scp.tls_port != node.scp.port
    result = _echo(node.scp.tls_port, *_client_tls(tls_files))
    assert result.returncode == 0, result.stderr
    storescu = require_dcmtk("storescu")
    views = four_views()
    files = [str(write(ds, tmp_path / "in")) for ds in views]
    result = _run(
        storescu,
        *_client_tls(tls_files),
        "-aet",
        "MODALITY",
        "-aec",
        "CADNODE",
        "127.0.0.1",
        str(node.scp.tls_port),
        *files,
    )
    assert result.returncode == 0, result.stderr
    study = wait_for(lambda: node.repo.show_study(views[0].StudyInstanceUID), timeout=10)
    assert len(study.instances) == 4
    assert _echo(node.scp.port).returncode == 0  # the plain listener is still there


def test_plain_client_is_refused_on_the_tls_port(
    node_factory: Callable[..., Node], tls_files: TlsFiles
) -> None:
    node = _tls_node(node_factory, tls_files)
    assert node.scp.tls_port is not None
    result = _echo(node.scp.tls_port)
    assert result.returncode != 0
    event = wait_for(lambda: _events(node, "connection.refused"))[0]
    assert "TLS handshake failed" in event.detail


def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    node_factory: Callable[..., Node], tls_files: TlsFiles
) -> None:
    node = _tls_node(node_factory, tls_files, tls_ca=tls_files.ca.bundle)
    port = node.scp.tls_port
    assert port is not None
    anonymous = _echo(port, "+tla", "+cf", str(tls_files.ca.bundle))
    assert anonymous.returncode != 0
    stranger = tls_files.stranger_client
    untrusted = _echo(
        port, "+tls", str(stranger.key), str(stranger.cert), "+cf", str(tls_files.ca.bundle)
    )
    assert untrusted.returncode != 0
    refused = wait_for(lambda: len(found := _events(node, "connection.refused")) >= 2 and found)
    assert all("TLS handshake failed" in e.detail for e in refused)
    trusted = _echo(port, *_client_tls(tls_files))
    assert trusted.returncode == 0, trusted.stderr


def test_tls_only_has_no_plain_listener(
    node_factory: Callable[..., Node], tls_files: TlsFiles
) -> None:
    plain = free_port()
    node = _tls_node(node_factory, tls_files, port=plain, tls_only=True)
    assert node.scp.port == node.scp.tls_port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", plain), timeout=5).close()
    assert _echo(node.scp.port, *_client_tls(tls_files)).returncode == 0


def test_a_silent_connection_does_not_hold_up_other_tls_clients(
    node_factory: Callable[..., Node], tls_files: TlsFiles
) -> None:
    """The handshake runs in the connection's thread, bounded by the ACSE timeout; pynetdicom's
    own server would shake hands in its accept loop and wait for this peer forever."""
    node = _tls_node(node_factory, tls_files, acse_timeout_seconds=3)
    assert node.scp.tls_port is not None
    with socket.create_connection(("127.0.0.1", node.scp.tls_port)) as silent:
        started = time.monotonic()
        result = _echo(node.scp.tls_port, *_client_tls(tls_files))
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 2.5
        event = wait_for(lambda: _events(node, "connection.timed_out"), timeout=10)[0]
        assert "TLS handshake not complete within 3 s" in event.detail
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the node


def test_pdu_limits_hold_on_tls_connections(
    node_factory: Callable[..., Node], tls_files: TlsFiles
) -> None:
    node = _tls_node(node_factory, tls_files)
    assert node.scp.tls_port is not None
    context = ssl.create_default_context(cafile=tls_files.ca.bundle)
    context.load_cert_chain(tls_files.client.cert, tls_files.client.key)
    raw = socket.create_connection(("127.0.0.1", node.scp.tls_port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 10 * 2**20))  # a 10 MiB association request
        answer = sock.recv(100)
    assert answer[:1] == b"\x07"  # A-ABORT
    event = wait_for(lambda: _events(node, "connection.refused"))[0]
    assert "A-ASSOCIATE-RQ declares 10485760 bytes" in event.detail
