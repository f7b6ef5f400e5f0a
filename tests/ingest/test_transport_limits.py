"""Hostile or broken peers at the TCP level: raw sockets against the running node on loopback."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from factories import mammogram
from helpers import wait_for
from scu import associate, store

from cad_node import dicom_status
from cad_node.node import Node

A_ABORT_INVALID_PDU_PARAMETER = bytes.fromhex("07000000000400000206")
"""A-ABORT, source: service provider, reason: invalid PDU parameter value (PS3.8 9.3.8)."""
RSS_SLACK = 64 * 2**20


def _rss() -> int:
    """This process's resident set size in bytes (the node runs in-process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextmanager
def _raw(node: Node) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", node.scp.port), timeout=5)
    try:
        yield sock
    finally:
        sock.close()


def _until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float] | None:
    """What the node sent before closing the connection, and when; None: still open."""
    start = time.monotonic()
    received = b""
    while (left := start + timeout - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - start
        received += chunk
    return None


def _events(node: Node, kind: str) -> list[dict[str, Any]]:
    return [e for e in node.repo.recent_events() if e.kind == kind]


def _echo_works(node: Node) -> bool:
    assoc = associate(node.scp.port)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == dicom_status.SUCCESS
    assoc.release()
    return bool(ok)


def test_huge_associate_header_is_refused_before_any_allocation(node: Node) -> None:
    before = _rss()
    with _raw(node) as sock:
        sock.sendall(bytes.fromhex("0100FFFFFFFF"))  # A-ASSOCIATE-RQ declaring 4 GiB, nothing more
        closed = _until_closed(sock, timeout=5)
        grown = _rss() - before
    assert grown < RSS_SLACK, f"resident memory grew by {grown / 2**20:.0f} MiB"
    assert closed is not None, "the node kept the connection open"
    received, elapsed = closed
    assert elapsed < 2
    assert received == A_ABORT_INVALID_PDU_PARAMETER
    [event] = wait_for(lambda: _events(node, "connection.refused"))
    assert event.level == "warning"
    assert "127.0.0.1" in event.detail
    assert "A-ASSOCIATE-RQ" in event.detail and "4294967295" in event.detail
    assert _echo_works(node)


def test_two_huge_headers_at_once_allocate_nothing(node: Node) -> None:
    before = _rss()
    with _raw(node) as first, _raw(node) as second:
        first.sendall(bytes.fromhex("0100FFFFFFFF"))
        second.sendall(bytes.fromhex("0200FFFFFFF0"))  # A-ASSOCIATE-AC: not ours to receive
        assert _until_closed(first, timeout=5) is not None
        assert _until_closed(second, timeout=5) is not None
        grown = _rss() - before
    assert grown < RSS_SLACK, f"resident memory grew by {grown / 2**20:.0f} MiB"
    assert _echo_works(node)


def test_oversized_p_data_after_a_valid_association_aborts_it(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(max_pdu=65536)
    # PDUs of exactly the limit pass: the SCU cuts P-DATA to the length the node announced.
    assert store(node.scp.port, [mammogram(rows=512, cols=512)]) == [dicom_status.SUCCESS]
    assoc = associate(node.scp.port)
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 65536 + 1))
    wait_for(lambda: assoc.is_aborted, timeout=2)
    [event] = wait_for(lambda: _events(node, "connection.refused"))
    assert "P-DATA-TF" in event.detail and "65537" in event.detail
    assert "65536" in event.detail
    assert _echo_works(node)


def test_connections_over_the_per_peer_cap_are_closed_at_once(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(max_connections_per_peer=2, acse_timeout_seconds=4)
    with _raw(node) as one, _raw(node) as two:
        time.sleep(0.3)  # both accepted and counted
        for _ in range(5):
            with _raw(node) as extra:
                closed = _until_closed(extra, timeout=2)
                assert closed is not None and closed[1] < 1, "a connection over the cap stayed open"
                assert closed[0] == b""  # closed before any byte was read or sent
        assert not associate(node.scp.port).is_established  # the cap holds for everyone there
        one.settimeout(0.2)
        two.settimeout(0.2)
        for held in (one, two):  # the first two are untouched
            with suppress(TimeoutError):
                assert held.recv(1) != b"", "a connection under the cap was closed"
        # One report for the address at its cap, not one per attempt.
        [event] = _events(node, "connection.refused")
        assert "127.0.0.1" in event.detail and "2 connections" in event.detail
    # Once the held connections are gone (their slots free when the node lets go of them,
    # at the latest after the ACSE timeout), a real association works again.
    assert wait_for(lambda: _echo_works(node), timeout=8, interval=0.5)
    summary = wait_for(
        lambda: [e for e in _events(node, "connection.refused") if "more" in e.detail]
    )
    assert "refused at the cap" in summary[0].detail


def test_refused_connections_give_their_slots_back_at_once(
    node_factory: Callable[..., Node],
) -> None:
    """A connection the node closed (an absurd header, garbage) frees its slot when it closes,
    not an ACSE timeout later: a peer's bad attempts do not lock its address out."""
    node = node_factory(max_connections_per_peer=2, acse_timeout_seconds=30)
    for header in ["0100FFFFFFFF", "0200FFFFFFF0", "0400FFFFFFFF", "0500FFFFFFFF"]:
        with _raw(node) as sock:
            sock.sendall(bytes.fromhex(header))
            assert _until_closed(sock, timeout=5) is not None
    with _raw(node) as sock:
        sock.sendall(bytes.fromhex("0100"))  # half a header, then the peer hangs up
    assert wait_for(lambda: _echo_works(node), timeout=3, interval=0.2)


def test_an_unknown_pdu_type_is_aborted_at_once(node: Node) -> None:
    for first in (True, False):
        assoc = None if first else associate(node.scp.port)
        if assoc is None:
            sock = socket.create_connection(("127.0.0.1", node.scp.port), timeout=5)
        else:
            assert assoc.is_established
            sock = assoc.dul.socket.socket
        sock.sendall(bytes.fromhex("090000000004") + bytes(4))  # type 0x09, a 4-byte body
        if assoc is None:
            closed = _until_closed(sock, timeout=5)
            sock.close()
            assert closed is not None and closed[1] < 2, "the connection stayed open"
            assert closed[0] == A_ABORT_INVALID_PDU_PARAMETER
        else:
            wait_for(lambda a=assoc: a.is_aborted, timeout=2)
    events = wait_for(lambda: len(e := _events(node, "connection.refused")) == 2 and e)
    assert all("unknown PDU type 0x09" in e.detail for e in events)
    assert _echo_works(node)


def test_a_silent_connection_is_closed_after_the_acse_timeout(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(acse_timeout_seconds=1)
    with _raw(node) as sock:
        closed = _until_closed(sock, timeout=5)
    assert closed is not None, "a connection that never sent a PDU stayed open"
    assert 0.5 < closed[1] < 3


def test_p_data_before_an_association_is_held_to_the_association_limit(node: Node) -> None:
    with _raw(node) as sock:
        sock.sendall(struct.pack(">BBL", 0x04, 0, 65536 + 1))  # under CAD_NODE_MAX_PDU, but first
        closed = _until_closed(sock, timeout=5)
    assert closed is not None and closed[0] == A_ABORT_INVALID_PDU_PARAMETER
    [event] = wait_for(lambda: _events(node, "connection.refused"))
    assert "P-DATA-TF declares 65537 bytes" in event.detail
    assert "before an association" in event.detail


def test_an_association_request_stalled_midway_is_dropped_after_the_acse_timeout(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(acse_timeout_seconds=1, network_timeout_seconds=30)
    with _raw(node) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + bytes(20))  # 20 of 200 bytes, then silence
        closed = _until_closed(sock, timeout=5)
    assert closed is not None, "a peer that stopped mid-PDU kept the connection"
    assert closed[1] < 3
    [event] = wait_for(lambda: _events(node, "connection.timed_out"))
    assert "127.0.0.1" in event.detail and "A-ASSOCIATE-RQ" in event.detail
    assert "20 of 200 bytes" in event.detail
    assert _echo_works(node)


def test_an_association_request_dribbled_byte_by_byte_is_dropped_after_the_acse_timeout(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(acse_timeout_seconds=1, network_timeout_seconds=30)
    with _raw(node) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200))
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < 5:
            try:
                sock.sendall(b"\x00")  # one byte every 0.2 s: never idle, never done
                sock.settimeout(0.2)
                if sock.recv(4096) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except OSError:  # reset: the node closed it
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "a peer dribbling one PDU kept the connection"
    assert closed_after < 3


def test_p_data_stalled_midway_is_dropped_after_the_network_timeout(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(network_timeout_seconds=1, acse_timeout_seconds=30)
    assoc = associate(node.scp.port)
    assert assoc.is_established
    start = time.monotonic()
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 100) + bytes(10))
    wait_for(lambda: assoc.is_aborted, timeout=5)
    assert time.monotonic() - start < 3
    assert _echo_works(node)
