"""uvicorn on a thread of the node process, on a socket bound before it starts."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from cad_node.errors import ConfigError
from cad_node.web.app import build_app
from cad_node.web.context import WebContext

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0


class WebServer:
    """The node's HTTP server; ``start`` returns once it answers, ``stop`` joins it."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> None:
        """Bind ``CAD_NODE_HTTP_HOST:CAD_NODE_HTTP_PORT`` and serve in a background thread.

        Raises :class:`ConfigError` when the address cannot be bound (in use, unknown host).
        """
        host, port = self.ctx.settings.http_host, self.ctx.settings.http_port
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
        except OSError as exc:
            raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from exc
        self._socket = sock
        config = uvicorn.Config(
            build_app(self.ctx),
            log_config=None,  # the node's logging, not uvicorn's
            access_log=False,  # scrapes every few seconds; the API's reads are not audit events
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"HTTP server on {host}:{port} did not start")
            time.sleep(0.02)
        log.info("HTTP server on %s:%d (health, metrics, API)", host, self.port)

    @property
    def port(self) -> int:
        """The TCP port bound."""
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server, self._thread = None, None
