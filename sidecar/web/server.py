"""Uvicorn on a thread of its own, started and stopped by the composition root.

The socket is bound in `start()` on the caller's thread, so a port already in use stops the
start with a clear error, and port 0 (tests) is resolved before anyone asks for it. Uvicorn does
not install signal handlers off the main thread, and gets no logging config of its own (structlog
owns logging). Stopping ends the live streams first (`EventHub.close`) so that shutdown does not
wait on open server-sent event connections.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from sidecar.errors import ConfigError
from sidecar.web.events import EventHub

log = structlog.get_logger("sidecar.web")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


def trusted_hosts(bind_host: str, allowed: tuple[str, ...] | list[str] = LOOPBACK_NAMES) -> list[str]:
    """The Host header values answered: the configured names plus the address the port is bound to."""
    names = list(allowed)
    if bind_host not in _ANY_ADDRESS:
        names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    return sorted(set(names))


class WebServer:
    """The web side port. Requests whose Host header names another host get 400 (a page on
    another site cannot reach the API through DNS rebinding)."""

    def __init__(self, app: ASGIApp, host: str, port: int, hub: EventHub | None = None,
                 allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_NAMES,
                 stow: Callable[[Request], Awaitable[Response]] | None = None) -> None:
        self.allowed_hosts = trusted_hosts(host, allowed_hosts)
        if stow is not None:  # STOW-RS receive (sidecar/ingest/stow.py) beside the app's own routes
            app = Starlette(routes=[
                Route("/dicom-web/studies", stow, methods=["POST"]),
                Route("/dicom-web/studies/{study}", stow, methods=["POST"]),
                Mount("/", app=app),
            ])
        app = TrustedHostMiddleware(app, allowed_hosts=self.allowed_hosts)
        self.app, self.host, self._port, self.hub = app, host, port, hub
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._sock is not None:
            return int(self._sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._sock = socket.create_server((self.host, self._port), family=family, backlog=128)
        except OSError as exc:
            raise ConfigError("sidecar.yaml", "web.port",
                              f"a free port on {self.host} ({self._port}: {exc.strerror})") from exc
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", ws="none", http="h11",
            loop="asyncio", timeout_graceful_shutdown=2, timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        sock = self._sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("sidecar.yaml", "web", f"an HTTP server that starts on {self.url}")
            time.sleep(0.01)
        log.info("web_started", url=self.url)

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        asyncio.run(self._server.serve(sockets=[sock]))

    def stop(self) -> None:
        if self._server is None:
            return
        if self.hub is not None:
            self.hub.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._sock = None, None, None
        log.info("web_stopped")


__all__ = ["LOOPBACK_NAMES", "WebServer", "trusted_hosts"]
