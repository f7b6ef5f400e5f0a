"""The storage SCP: its presentation contexts, listeners and event wiring.

The AE itself, its timeouts, limits and TLS come from :mod:`cad_node.dicom_net`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from pynetdicom import AE, _config, evt

from cad_node import dicom_net
from cad_node.ingest import handlers, receive_path
from cad_node.ingest.handlers import IngestContext
from cad_node.ingest.transport import Reporter
from cad_node.settings import Settings
from cad_node.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION, decodable_transfer_syntaxes

log = logging.getLogger(__name__)


def build_ae(settings: Settings, report: Reporter) -> AE:
    """The listening AE (:mod:`cad_node.dicom_net`) accepting Verification and the
    mammography storage SOP classes."""
    ae = dicom_net.listening_ae(settings, report)
    syntaxes = decodable_transfer_syntaxes()
    ae.add_supported_context(VERIFICATION)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    return ae


class StorageSCP:
    """A running storage SCP, plain, over TLS or both; ``start`` returns once it listens."""

    def __init__(self, settings: Settings, ctx: IngestContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.listeners = dicom_net.listeners(settings)  # a bad TLS file fails here, at start-up
        self._servers: dict[str, Any] = {}

    def start(self) -> None:
        """Listen on the configured address (port 0 picks a free one)."""
        # Received datasets stream straight to a file in the spool's incoming folder, on the
        # same filesystem as the spool, so acknowledging one is an fsync and a rename.
        _config.STORE_RECV_CHUNKED_DATASET = True
        receive_path.install(self.ctx.spool.incoming)
        ae = build_ae(self.settings, partial(handlers.record_connection_event, self.ctx))
        bound = [self.ctx]
        handlers_bound: list[Any] = [
            (evt.EVT_REQUESTED, handlers.handle_requested, bound),
            (evt.EVT_C_ECHO, handlers.handle_echo, bound),
            (evt.EVT_C_STORE, handlers.handle_store, bound),
            (evt.EVT_ACCEPTED, handlers.handle_accepted, bound),
            (evt.EVT_REJECTED, handlers.handle_rejected, bound),
            (evt.EVT_ABORTED, handlers.handle_aborted, bound),
            (evt.EVT_CONN_CLOSE, handlers.handle_connection_closed, bound),
        ]
        try:
            for listener in self.listeners:
                self._servers[listener.name] = ae.start_server(
                    listener.address,
                    block=False,
                    ssl_context=listener.ssl_context,
                    evt_handlers=handlers_bound,
                )
        except BaseException:
            self.stop()
            raise
        log.info("storage SCP %s listening on %s", self.settings.ae_title, self.describe())

    @property
    def port(self) -> int:
        """The TCP port actually bound: the plain one, or the TLS one when it is the only."""
        server = self._servers.get("plain") or self._servers["tls"]
        return int(server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port; None without one."""
        server = self._servers.get("tls")
        return None if server is None else int(server.server_address[1])

    def describe(self) -> str:
        """Where it listens, e.g. ``0.0.0.0 port 11112 and TLS port 2762``."""
        parts = []
        if "plain" in self._servers:
            parts.append(f"port {self.port}")
        if self.tls_port is not None:
            mutual = " (client certificates required)" if self.settings.tls_ca else ""
            parts.append(f"TLS port {self.tls_port}{mutual}")
        return f"{self.settings.host} {' and '.join(parts)}"

    @property
    def listening(self) -> bool:
        """True while every listener runs with its socket open (for readiness)."""
        return bool(self._servers) and all(
            server.socket.fileno() >= 0 for server in self._servers.values()
        )

    def stop(self) -> None:
        """Stop accepting and close the listening sockets."""
        for server in self._servers.values():
            server.shutdown()
        self._servers = {}
        receive_path.release(self.ctx.spool.incoming)
