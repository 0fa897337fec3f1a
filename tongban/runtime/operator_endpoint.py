"""The operator endpoint of a component: ``/metrics``, ``/livez`` and ``/readyz`` over HTTP.

:class:`OperatorEndpoint` serves ``/metrics`` (Prometheus text), ``/livez`` (the process answers)
and ``/readyz`` (200 when every readiness check holds, else 503 with the checks as JSON) from a
thread of its own, so a scrape never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ledger.files import write_atomically
from tongban.core.errors import ConfigError
from tongban.runtime.metrics import Metrics

log = structlog.get_logger("tongban.runtime.operator_endpoint")

Readiness = Callable[[], Mapping[str, bool]]
NOT_REQUIRED: Final = "not_required"
"""Key of ``/readyz``'s JSON holding checks shown but not required for readiness (e.g. a gateway's
``cross_region``: Submit still works while the hub is down)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port).

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics listen address {listen!r} is not host:port")
    return host, int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class OperatorEndpoint:
    """HTTP ``/metrics``, ``/livez`` and ``/readyz`` of one component, on a thread of its own.

    ``async with OperatorEndpoint(...)`` starts and stops it; ``start()``/``stop()`` are
    idempotent. ``readiness`` is called from the endpoint's thread and must only read state.

    Args:
        listen: ``host:port``; port 0 picks a free port (see :attr:`port`, and ``port_file``).
        metrics: the component's metrics (``/metrics`` is empty when they are disabled).
        readiness: named checks, all True when the component can take requests.
        port_file: if set, the bound port is written there once serving.
        informational: named checks shown under ``not_required`` in ``/readyz``, which they do
            not fail.
    """

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        *,
        readiness: Readiness = dict,
        port_file: Path | None = None,
        informational: Readiness = dict,
    ) -> None:
        self.listen = listen
        self.informational = informational
        self.host, self._want_port = parse_listen(listen)
        self.metrics = metrics
        self.readiness = readiness
        self.port_file = port_file
        self.port = 0
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._metrics_app = make_wsgi_app(metrics.registry) if metrics.registry is not None else None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if self._metrics_app is None:
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b""]
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/readyz":
            try:
                checks = {k: bool(v) for k, v in self.readiness().items()}
            except Exception as exc:  # a check that fails to answer is a check that fails
                log.warning("metrics.readiness_failed", error=type(exc).__name__)
                checks = {"readiness": False}
            ready = all(checks.values())
            body: dict[str, object] = dict(checks)
            try:
                shown = {k: bool(v) for k, v in self.informational().items()}
            except Exception as exc:  # not required: say it could not be told, stay ready
                log.warning("metrics.informational_failed", error=type(exc).__name__)
                shown = {"informational": False}
            if shown:
                body[NOT_REQUIRED] = shown
            start_response(
                "200 OK" if ready else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [json.dumps(body, sort_keys=True).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: /metrics, /livez, /readyz\n"]

    async def start(self) -> None:
        if self._server is not None:
            return

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        try:
            server = make_server(
                self.host, self._want_port, self._app, server_class=Server, handler_class=_QuietHandler
            )
        except OSError as exc:  # the port is taken, the address is not this host's, …
            raise ConfigError(
                f"cannot listen on {self.listen} for the metrics endpoint: {exc.strerror or exc}"
            ) from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="operator-endpoint", daemon=True
        )
        self._thread.start()
        if self.port_file is not None:
            write_atomically(self.port_file, str(self.port).encode())
        log.info("metrics.serving", host=self.host, port=self.port, role=self.metrics.role)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)  # waits for the serving loop's next poll
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    async def __aenter__(self) -> OperatorEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
