"""The storage SCP: pynetdicom AE setup and event wiring."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from pynetdicom import AE, _config, evt

from cad_node import tls
from cad_node.ingest import handlers, receive_path
from cad_node.ingest.handlers import IngestContext
from cad_node.ingest.transport import ConnectionLimits, GuardedAE, Reporter
from cad_node.settings import Settings
from cad_node.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION, decodable_transfer_syntaxes

log = logging.getLogger(__name__)


def build_ae(settings: Settings, report: Reporter) -> AE:
    """An AE that accepts Verification and the mammography storage SOP classes.

    Its servers bound every PDU read and the connections per address (see ``transport``);
    ``report`` records what they refuse.
    """
    limits = ConnectionLimits(
        max_p_data=settings.max_pdu,
        acse_timeout=settings.acse_timeout_seconds,
        network_timeout=settings.network_timeout_seconds,
        max_per_peer=settings.max_connections_per_peer,
    )
    ae = GuardedAE(settings.ae_title, limits, report)
    ae.require_called_aet = True
    if settings.allowed_calling_aes:
        # The titles here; hosts they are pinned to are checked at EVT_REQUESTED (handlers).
        ae.require_calling_aet = sorted({p.ae_title for p in settings.allowed_calling_aes})
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    # Generous defaults: a modality may pause between images; a dead peer is still dropped.
    # A connection that sends no A-ASSOCIATE-RQ is closed after the ACSE timeout (ARTIM).
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
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
        self.ssl_context = tls.server_context(settings)  # a bad file fails here, at start-up
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
        listeners: dict[str, tuple[int, Any]] = {}
        if not self.settings.tls_only:
            listeners["plain"] = (self.settings.port, None)
        if self.ssl_context is not None:
            listeners["tls"] = (self.settings.tls_port, self.ssl_context)
        try:
            for name, (port, ssl_context) in listeners.items():
                self._servers[name] = ae.start_server(
                    (self.settings.host, port),
                    block=False,
                    ssl_context=ssl_context,
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
