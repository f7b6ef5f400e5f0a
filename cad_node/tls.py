"""TLS contexts for DICOM (PS3.15 Annex B): the SCP's listener and the SCU's destinations.

Both refuse protocol versions below TLS 1.2. Every file is read when the context is built, so a
missing, unreadable or malformed certificate or key is a :class:`ConfigError` naming the setting
and the file, at start-up rather than at the first connection.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any, NoReturn

from cad_node.errors import ConfigError
from cad_node.settings import Destination, Settings

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _check_readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _encrypted_key() -> NoReturn:
    raise ConfigError("the private key is encrypted; give an unencrypted PEM key")


def _load_chain(ctx: ssl.SSLContext, names: tuple[str, str], cert: Path, key: Path | None) -> None:
    _check_readable(names[0], cert)
    if key is not None:
        _check_readable(names[1], key)
    try:
        ctx.load_cert_chain(cert, key, password=_encrypted_key)
    except ConfigError as exc:
        raise ConfigError(f"{names[1]}: {key or cert}: {exc}") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{names[0]}/{names[1]}: {cert}{f' and {key}' if key else ''} are not a PEM"
            f" certificate and its private key ({describe(exc)})"
        ) from None


def _load_ca(ctx: ssl.SSLContext, setting: str, ca: Path) -> None:
    _check_readable(setting, ca)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"{setting}: {ca} is not a PEM CA bundle ({describe(exc)})") from None


def describe(exc: BaseException) -> str:
    """A short reason for a TLS failure, e.g. ``certificate verify failed: unable to get ...``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's context (mutual TLS when ``tls_ca`` is set); None without a TLS port."""
    if not settings.tls_port:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("CAD_NODE_TLS_PORT needs CAD_NODE_TLS_CERT and CAD_NODE_TLS_KEY")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    _load_chain(ctx, ("CAD_NODE_TLS_CERT", "CAD_NODE_TLS_KEY"), settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        _load_ca(ctx, "CAD_NODE_TLS_CA", settings.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ClientContext(ssl.SSLContext):
    """A client context that remembers why its last handshake failed.

    pynetdicom logs a failed TLS connection but reports only "not established"; the reason is
    kept here for the delivery outcome.
    """

    failure: str | None = None


class _ClientSocket(ssl.SSLSocket):
    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().do_handshake(*args, **kwargs)
        except (ssl.SSLError, OSError) as exc:
            context = self.context
            if isinstance(context, ClientContext):
                context.failure = describe(exc)
            raise


def client_context(destination: Destination) -> ClientContext:
    """The context to reach ``destination`` (its ``tls_*`` settings)."""
    where = f"destination {destination}"
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslsocket_class = _ClientSocket
    ctx.minimum_version = MINIMUM_VERSION
    if destination.tls_ca is not None:
        _load_ca(ctx, f"{where} tls_ca", destination.tls_ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if destination.tls_cert is not None:
        names = (f"{where} tls_cert", f"{where} tls_key")
        _load_chain(ctx, names, destination.tls_cert, destination.tls_key)
    ctx.check_hostname = destination.tls_verify and destination.tls_check_hostname
    if not destination.tls_verify:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_destinations(destinations: list[Destination]) -> None:
    """Build every TLS destination's context once (a bad file fails start-up); warn about
    destinations whose certificate or host name is not checked."""
    for destination in destinations:
        if not destination.tls:
            continue
        client_context(destination)
        if not destination.tls_verify:
            log.warning(
                "destination %s: TLS without checking its certificate (tls_verify = false);"
                " anyone on the path can pose as it",
                destination,
            )
        elif not destination.tls_check_hostname:
            log.warning(
                "destination %s: its TLS certificate is not checked against its host name"
                " (tls_check_hostname = false)",
                destination,
            )
