"""Where the node's DICOM Application Entities are made, from the settings.

Two kinds: the listening AE of the storage SCP (called AE title required, calling AE titles
from ``allowed_calling_aes``, PDU size, association cap, the ACSE/DIMSE/network timeouts and
the transport guard of :mod:`cad_node.ingest.transport`) with its listeners (plain and TLS),
and the requesting AEs that send to a destination or, in the demo, play a modality (every wait
bounded). Presentation contexts are the caller's: they say what a stage speaks, not how safely.
A security setting (timeouts, PDU limits, TLS) goes here, and so reaches every association.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final

from pynetdicom import AE

from cad_node import tls
from cad_node.ingest.transport import ConnectionLimits, GuardedAE, Reporter
from cad_node.settings import Destination, Settings

CONNECT_TIMEOUT_MAX: Final = 10.0
"""A requesting AE gives up a TCP connect after at most this many seconds."""


@dataclass(frozen=True)
class Listener:
    """One address the listening AE serves, plain or over TLS."""

    name: str
    """``plain`` or ``tls``."""
    address: tuple[str, int]
    ssl_context: ssl.SSLContext | None


def connection_limits(settings: Settings) -> ConnectionLimits:
    """What one connection to the listening AE may declare, how long it may take, how many
    per address."""
    return ConnectionLimits(
        max_p_data=settings.max_pdu,
        acse_timeout=settings.acse_timeout_seconds,
        network_timeout=settings.network_timeout_seconds,
        max_per_peer=settings.max_connections_per_peer,
    )


def listening_ae(settings: Settings, report: Reporter) -> GuardedAE:
    """The SCP's AE, without presentation contexts.

    Its servers bound every PDU read and the connections per address (``transport``);
    ``report`` records what they refuse.
    """
    ae = GuardedAE(settings.ae_title, connection_limits(settings), report)
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
    return ae


def listeners(settings: Settings) -> list[Listener]:
    """The plain listener (unless ``tls_only``) and the TLS one (when ``tls_port`` is set).

    The TLS context is built here, so a missing or bad certificate fails at start-up.

    Raises:
        ConfigError: a TLS file is missing, unreadable or malformed.
    """
    found = []
    if not settings.tls_only:
        found.append(Listener("plain", (settings.host, settings.port), None))
    context = tls.server_context(settings)
    if context is not None:
        found.append(Listener("tls", (settings.host, settings.tls_port), context))
    return found


def requesting_ae(ae_title: str, *, timeout: float) -> AE:
    """An AE that requests associations, without presentation contexts.

    Negotiation, each DIMSE response and each network read wait at most ``timeout`` seconds,
    the TCP connect at most :data:`CONNECT_TIMEOUT_MAX`; the PDU size is pynetdicom's default.
    """
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, CONNECT_TIMEOUT_MAX)
    return ae


def tls_arguments(destination: Destination) -> tuple[tls.ClientContext, str] | None:
    """pynetdicom's ``tls_args`` to reach ``destination``; None when it is not a TLS one.

    Read for each association, so a renewed certificate is used without a restart. The context
    keeps why its handshake failed (:class:`~cad_node.tls.ClientContext`).

    Raises:
        ConfigError: a TLS file of the destination is missing, unreadable or malformed.
    """
    if not destination.tls:
        return None
    return tls.client_context(destination), destination.host
