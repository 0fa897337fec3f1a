"""``http2 = true`` against a back end that speaks HTTP/2: ALPN picks h2 over TLS, and requests on
one back end share its connections (a real HTTP/2 server: hypercorn, on port 0)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from tests.connectors.backends.conftest import MakeBackend
from tests.connectors.backends.http_backend import PENSION, adapter_request
from tongban.core.catalogue import Catalogue
from tongban.runtime import certs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class H2Backend:
    """An ASGI back end that answers every GET with a pension record and remembers the HTTP version
    and the client connection of each request."""

    versions: list[str] = field(default_factory=list)
    clients: set[tuple[str, int]] = field(default_factory=set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up
        self.versions.append(scope["http_version"])
        self.clients.add(tuple(scope["client"]))
        body = json.dumps(
            {"code": 0, "data": {"state": "正常参保", "months": 220}}, ensure_ascii=False
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def h2_backend(tmp_path: Path) -> AsyncIterator[tuple[H2Backend, str]]:
    ca = certs.create_ca("h2 back-end CA")
    tls = tmp_path / "tls"
    certs.write(ca, tls, "ca")
    key, crt = certs.write(certs.issue_server(ca, ["127.0.0.1"]), tls, "backend")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    config = HypercornConfig()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile, config.keyfile = str(crt), str(key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = config.errorlog = None
    app = H2Backend()
    stop = asyncio.Event()
    port = sock.getsockname()[1]
    sock.detach()  # hypercorn owns the descriptor from here (and closes it when it stops)
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        yield app, f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await server


async def test_http2_is_negotiated_and_requests_share_a_connection(
    h2_backend: tuple[H2Backend, str], backends: MakeBackend, catalogue: Catalogue
) -> None:
    app, base_url = h2_backend
    backend = backends(base_url, http2=True, ca_file="tls/ca.crt")
    service = backend.service(
        PENSION,
        {
            "path": "/persons/{applicant.id}",
            "response": {"status": "$.data.state", "total_months": "$.data.months"},
        },
        catalogue.items[PENSION],
    )
    answers = await asyncio.gather(*(service.call(adapter_request(PENSION)) for _ in range(6)))
    assert answers == [{"status": "正常参保", "total_months": 220}] * 6
    assert app.versions == ["2"] * 6
    assert len(app.clients) <= 2  # multiplexed, not one connection per call


async def test_without_http2_the_same_back_end_is_spoken_to_in_http_1_1(
    h2_backend: tuple[H2Backend, str], backends: MakeBackend, catalogue: Catalogue
) -> None:
    app, base_url = h2_backend
    backend = backends(base_url, ca_file="tls/ca.crt")
    service = backend.service(PENSION, {"path": "/persons/{applicant.id}"}, catalogue.items[PENSION])
    await service.call(adapter_request(PENSION))
    assert app.versions == ["1.1"]
