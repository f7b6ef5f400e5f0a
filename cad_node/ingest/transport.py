"""The storage SCP's transport: bounded PDU reads and a cap on connections per peer address.

pynetdicom's upper layer reads each PDU from the association's socket as ``recv(6)`` (type,
reserved byte, 32-bit length) and then ``recv(length)``. For the connections our server accepts,
and only those, :class:`PduReader` does these reads:

- the declared length is checked as soon as the 6-byte header is in, before anything more is
  read or allocated; over its type's limit (:meth:`ConnectionLimits.max_length`) the peer gets
  an A-ABORT and the connection is closed at once, as does a PDU of an unknown type. The first
  PDU, which can only be an association request, is held to the A-ASSOCIATE limit whatever
  its type;
- a PDU must arrive whole within the network timeout (the first one: the ACSE timeout, as
  pynetdicom's ARTIM timer cannot fire while a read blocks), however slowly its bytes come;
- the buffer grows with the bytes that arrived (4 MiB at first, then doubling), never from a
  declared length alone, and is filled by ``recv_into``: a 17 MB mammogram in a few reads, not
  the 4000 Python-level 4 KiB reads of pynetdicom's own ``recv``.

A refused or timed-out read comes back short, which pynetdicom takes for the peer closing the
connection (Evt17); its state machine then ends the association as usual.

:class:`GuardedAE` plugs this in through pynetdicom's extension points (``make_server``'s
server class and request handler). On a TLS listener the handshake runs in the connection's
thread, bounded by the ACSE timeout, and the reader then reads the decrypted stream through the
same checks. No pynetdicom module or class is patched: each accepted
connection's socket object gets its ``recv`` from a :class:`PduReader`, in one place
(:meth:`GuardedRequestHandler.handle`).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from cad_node.tls import describe

log = logging.getLogger(__name__)

PDU_HEADER = 6
MAX_ASSOCIATE_LENGTH = 64 * 1024
"""Largest A-ASSOCIATE-RQ/AC accepted: 128 presentation contexts with a user identity token
take a few tens of KiB."""
FIXED_LENGTH = 4
"""A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 4 bytes after their header (PS3.8 9.3)."""
FIRST_ALLOCATION = 4 * 2**20
"""A read allocates at most this much before bytes arrive; then it doubles as they do."""
PDU_NAMES: dict[int, str] = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
A_ABORT_INVALID_PARAMETER = bytes.fromhex("07000000000400000206")
"""A-ABORT PDU; source: service provider, reason: invalid PDU parameter value (PS3.8 9.3.8)."""

DUL_CHECK_SECONDS = 0.2
"""How often a connection's thread checks that pynetdicom's DUL still runs."""

Reporter = Callable[[str, str, str], None]
"""Records a connection-level event: ``(kind, peer "host:port", reason)``."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may declare, how long a PDU may take, how many per address."""

    max_p_data: int
    """Largest P-DATA-TF length (CAD_NODE_MAX_PDU, what we announce); 0: no limit."""
    acse_timeout: float
    """The first PDU (the association request) must arrive whole within this many seconds."""
    network_timeout: float
    """Each later PDU must arrive whole within this many seconds; also bounds each send."""
    max_per_peer: int

    def max_length(self, pdu_type: int) -> int | None:
        """The largest declared length accepted for ``pdu_type``; None: no limit."""
        if pdu_type in (0x01, 0x02):
            return MAX_ASSOCIATE_LENGTH
        if pdu_type == 0x04:
            return self.max_p_data or None
        return FIXED_LENGTH


class PduReader:
    """``recv`` for one accepted connection's socket: checked, bounded, with a deadline."""

    def __init__(
        self, sock: AssociationSocket, limits: ConnectionLimits, report: Reporter, peer: str
    ) -> None:
        self._sock = sock
        self._limits = limits
        self._report = report
        self._peer = peer
        self._body_left = 0
        self._first = True
        self._pdu = "PDU header"
        self._timeout = limits.acse_timeout
        self._deadline = 0.0
        if sock.socket is not None:
            sock.socket.settimeout(limits.network_timeout)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``; fewer (as if the peer closed) when refused, late or closed."""
        if nr_bytes <= 0:
            return bytearray()
        if self._body_left == 0:
            return self._read_header(nr_bytes)
        self._body_left = max(0, self._body_left - nr_bytes)
        return self._read(nr_bytes)

    def _read_header(self, nr_bytes: int) -> bytearray:
        first, self._first = self._first, False
        self._timeout = self._limits.acse_timeout if first else self._limits.network_timeout
        self._deadline = time.monotonic() + self._timeout
        self._pdu = "PDU header"
        header = self._read(nr_bytes)
        if nr_bytes != PDU_HEADER or len(header) < PDU_HEADER:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header)
        name = PDU_NAMES.get(pdu_type)
        if name is None:
            # pynetdicom would read the rest as the next PDU's header and wait for it (up to
            # the network timeout) before its A-ABORT; PS3.8 9.3.1 wants the A-ABORT now.
            self._refuse(f"unknown PDU type 0x{pdu_type:02X}")
            return bytearray()
        limit = MAX_ASSOCIATE_LENGTH if first else self._limits.max_length(pdu_type)
        if limit is not None and length > limit:
            when = " before an association" if first and pdu_type not in (0x01, 0x02) else ""
            self._refuse(f"{name} declares {length} bytes, more than the {limit} accepted{when}")
            return bytearray()
        self._pdu = name
        self._body_left = length
        return header

    def _read(self, nr_bytes: int) -> bytearray:
        raw = self._sock.socket
        if raw is None:
            return bytearray()
        buffer = bytearray(min(nr_bytes, FIRST_ALLOCATION))
        received = 0
        try:
            while received < nr_bytes:
                if received == len(buffer):
                    buffer += bytes(min(len(buffer), nr_bytes - received))
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                raw.settimeout(left)
                with memoryview(buffer)[received:] as view:
                    got = raw.recv_into(view)
                if not got:
                    break  # the peer closed: return what arrived, as pynetdicom expects
                received += got
        except TimeoutError:
            self._timed_out(received, nr_bytes)
        except OSError:
            pass  # reset by the peer: the same as closed
        finally:
            with suppress(OSError):
                raw.settimeout(self._limits.network_timeout)
        return buffer if received == nr_bytes else buffer[:received]

    def _refuse(self, reason: str) -> None:
        self._close(A_ABORT_INVALID_PARAMETER)
        self._report("connection.refused", self._peer, f"{reason}; connection aborted")

    def _timed_out(self, received: int, wanted: int) -> None:
        self._close(b"")
        self._report(
            "connection.timed_out",
            self._peer,
            f"{self._pdu} not received within {self._timeout:g} s ({received} of {wanted} bytes);"
            " connection closed",
        )

    def _close(self, last_words: bytes) -> None:
        raw = self._sock.socket
        if raw is None:
            return
        with suppress(OSError):
            if last_words:
                raw.sendall(last_words)
            raw.shutdown(socket.SHUT_RDWR)
        raw.close()


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, counting open connections per address.

    An address at its cap gets one ``connection.refused`` report, not one per attempt (a flood
    must not turn into audit rows written from the accept loop); how many more were refused is
    reported when one of its connections ends.
    """

    daemon_threads = True

    def __init__(
        self, *args: Any, limits: ConnectionLimits, report: Reporter, **kwargs: Any
    ) -> None:
        self.limits = limits
        self.report = report
        self._open: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Accept a connection unless its address already has the most it may open."""
        host = str(client_address[0])
        with self._open_lock:
            open_now = self._open[host]
            if open_now < self.limits.max_per_peer:
                self._open[host] += 1
                return True
            self._refused[host] += 1
            repeated = self._refused[host] > 1
        if repeated:
            return False
        self.report(
            "connection.refused",
            f"{host}:{client_address[1]}",
            f"{open_now} connections from this address already open"
            " (CAD_NODE_MAX_CONNECTIONS_PER_PEER); connection closed",
        )
        return False  # socketserver closes it without reading a byte

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; with TLS, wrap it but leave the handshake to its own thread.

        pynetdicom's own ``get_request`` shakes hands in the accept loop, where one silent
        peer would hold up every other connection.
        """
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def handshake(self, sock: ssl.SSLSocket, peer: str) -> bool:
        """Complete the TLS handshake within the ACSE timeout; report and False if it fails."""
        deadline = time.monotonic() + self.limits.acse_timeout
        try:
            sock.setblocking(False)
            waiting: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]]
            while True:
                try:
                    sock.do_handshake()
                    return True
                except ssl.SSLWantReadError:
                    waiting = ([sock], [])
                except ssl.SSLWantWriteError:
                    waiting = ([], [sock])
                left = deadline - time.monotonic()
                if left <= 0 or not any(select.select(*waiting, [], left)[:2]):
                    self.report(
                        "connection.timed_out",
                        peer,
                        f"TLS handshake not complete within {self.limits.acse_timeout:g} s;"
                        " connection closed",
                    )
                    return False
        except (ssl.SSLError, OSError) as exc:
            reason = f"TLS handshake failed ({describe(exc)}); connection closed"
            self.report("connection.refused", peer, reason)
            return False
        finally:
            with suppress(OSError):
                sock.setblocking(True)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread; its slot is given back if that fails."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_ended(client_address)
            raise

    def connection_ended(self, client_address: Any) -> None:
        """Give back the slot of a connection whose association has ended."""
        host = str(client_address[0])
        with self._open_lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]
            unreported = self._refused.pop(host, 0) - 1
        if unreported > 0:
            self.report(
                "connection.refused",
                host,
                f"{unreported} more connections from this address refused at the cap",
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, not socketserver's traceback on stderr."""
        log.error("connection from %s failed", client_address[0])
        log.debug("connection failure details", exc_info=True)


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler, reading through a :class:`PduReader` and holding the slot."""

    server: GuardedServer

    def handle(self) -> None:
        """Shake hands (on a TLS listener), then run the association in its thread; give the
        connection's slot back when it ends."""
        try:
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            if isinstance(self.request, ssl.SSLSocket) and not self.server.handshake(
                self.request, peer
            ):
                return
            assoc = self._create_association()
            sock = cast(AssociationSocket, assoc.dul.socket)  # set by _create_association
            reader = PduReader(sock, self.server.limits, self.server.report, peer)
            sock.recv = reader.recv  # type: ignore[method-assign]  # this connection only
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            while assoc.is_alive():
                assoc.join(timeout=DUL_CHECK_SECONDS)
                if assoc.is_alive() and not assoc.is_established and not assoc.dul.is_alive():
                    # The connection ended before an association request (refused, closed or
                    # garbage): pynetdicom would wait out the ACSE timeout for one, holding
                    # this slot. None is what its wait returns on a timeout.
                    assoc.dul.to_user_queue.put(None)
                    assoc.join()
        finally:
            self.server.connection_ended(self.client_address)


class GuardedAE(AE):
    """An AE whose association servers are :class:`GuardedServer` instances."""

    def __init__(self, ae_title: str, limits: ConnectionLimits, report: Reporter) -> None:
        super().__init__(ae_title=ae_title)
        self.limits = limits
        self.report = report

    def make_server(
        self,
        address: Any,
        ae_title: str | None = None,
        contexts: Any = None,
        ssl_context: Any = None,
        evt_handlers: Any = None,
        server_class: Any = None,
        **kwargs: Any,
    ) -> GuardedServer:
        """A :class:`GuardedServer` (threaded, whichever class pynetdicom asks for)."""
        server = super().make_server(
            address,
            ae_title=ae_title,
            contexts=contexts,
            ssl_context=ssl_context,
            evt_handlers=evt_handlers,
            server_class=GuardedServer,
            request_handler=GuardedRequestHandler,
            limits=self.limits,
            report=self.report,
            **kwargs,
        )
        return cast(GuardedServer, server)
