"""A real HTTP back end for the HTTP adapter's tests: an aiohttp server on port 0 (plain or TLS)
that records every request and answers as the test scripted it.

It checks credentials itself, as a government back end would: a bearer token, or the HMAC
signature recomputed from the documented canonical request (docs/adapters/http.md), written here
from the documentation, not from the adapter's code, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from connectors.adapters import AdapterRequest

__all__ = [
    "APPLICANT_ID",
    "BackendApp",
    "Reply",
    "Seen",
    "adapter_request",
    "hold",
    "json_reply",
    "raw_reply",
    "sequence",
    "status_reply",
]

APPLICANT_ID = "44030419900307123X"
PENSION = "SBJFJLCX0001"
"""社会保险参保缴费记录查询: a query, every form field optional."""
TRANSFER = "YLBXZYJX0001"
"""企业职工基本养老保险关系转移接续: a case, two required region fields."""


@dataclass(frozen=True)
class Seen:
    """One request as the back end received it."""

    method: str
    raw_path: str
    """The request target as on the request line: path and query, percent-encoded."""
    headers: dict[str, str]
    body: bytes
    peer_port: int
    """The client's port: one per connection."""

    @property
    def segments(self) -> list[str]:
        """The path's segments, as a server splits them before decoding each."""
        return self.raw_path.partition("?")[0].split("/")

    @property
    def query(self) -> str:
        return self.raw_path.partition("?")[2]

    def json(self) -> Any:
        return json.loads(self.body)


Reply = Callable[["BackendApp", Seen, web.Request], Awaitable[web.StreamResponse]]


def json_reply(document: Any, status: int = 200) -> Reply:
    async def reply(app: BackendApp, seen: Seen, request: web.Request) -> web.StreamResponse:
        return web.json_response(document, status=status)

    return reply


def status_reply(status: int, **headers: str) -> Reply:
    async def reply(app: BackendApp, seen: Seen, request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, text="back-end error page with 440304199001011234", headers=headers
        )

    return reply


def raw_reply(body: bytes, *, chunked: bool = False, **headers: str) -> Reply:
    """``body`` as is; ``chunked``: streamed in 64 KiB chunks with no Content-Length."""

    async def reply(app: BackendApp, seen: Seen, request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json", headers=headers)
        stream = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for at in range(0, len(body), 1 << 16):
            try:
                await stream.write(body[at : at + (1 << 16)])
            except ConnectionError:
                break  # the adapter stopped reading: what the test is about
        return stream

    return reply


def sequence(*replies: Reply) -> Reply:
    """The n-th request gets the n-th reply; later ones the last."""
    taken: list[Reply] = list(replies)

    async def reply(app: BackendApp, seen: Seen, request: web.Request) -> web.StreamResponse:
        current = taken.pop(0) if len(taken) > 1 else taken[0]
        return await current(app, seen, request)

    return reply


def hold(then: Reply) -> Reply:
    """Answer only when the test (or the server's stop) releases the back end."""

    async def reply(app: BackendApp, seen: Seen, request: web.Request) -> web.StreamResponse:
        await app.released.wait()
        return await then(app, seen, request)

    return reply


@dataclass
class BackendApp:
    """The back end. ``async with BackendApp(...) as app`` serves on ``app.base_url``.

    Args:
        tls: a server TLS context (with ``verify_mode = CERT_REQUIRED`` for mutual TLS).
        bearer: the token every request must carry.
        hmac_key: (key id, secret) every request must be signed with.
    """

    tls: ssl.SSLContext | None = None
    bearer: str = ""
    hmac_key: tuple[str, bytes] | None = None
    reply: Reply = field(default_factory=lambda: json_reply({"ok": True}))
    seen: list[Seen] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Why requests were refused (401), in order."""
    base_url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _nonces: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> BackendApp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/api"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=10)

    @property
    def calls(self) -> int:
        return len(self.seen)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            request.method,
            request.raw_path,
            dict(request.headers),
            await request.read(),
            peer[1] if peer else 0,
        )
        refusal = self._refusal(seen)
        if refusal:
            self.refused.append(refusal)
            return web.Response(status=401, text="unauthenticated")
        self.seen.append(seen)
        return await self.reply(self, seen, request)

    def _refusal(self, seen: Seen) -> str:
        if self.bearer and seen.headers.get("Authorization") != f"Bearer {self.bearer}":
            return "bearer token"
        if self.hmac_key is not None:
            return check_signature(seen, *self.hmac_key, nonces=self._nonces)
        return ""


def check_signature(seen: Seen, key_id: str, secret: bytes, *, nonces: set[str], skew_s: int = 300) -> str:
    """Why the HMAC signature of ``seen`` fails, or "" (docs/adapters/http.md, "HMAC signing")."""
    h = seen.headers
    if h.get("X-Tongban-Key-Id") != key_id:
        return "key id"
    timestamp, nonce = h.get("X-Tongban-Timestamp", ""), h.get("X-Tongban-Nonce", "")
    if not timestamp.isdecimal() or abs(time.time() - int(timestamp)) > skew_s:
        return "timestamp"
    if len(nonce) != 32 or nonce in nonces:
        return "nonce"
    digest = hashlib.sha256(seen.body).hexdigest()
    if h.get("X-Tongban-Content-SHA256") != digest:
        return "body digest"
    path, _, query = seen.raw_path.partition("?")
    canonical = f"{seen.method}\n{path}\n{query}\n{timestamp}\n{nonce}\n{digest}".encode()
    expected = base64.b64encode(hmac.new(secret, canonical, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, h.get("X-Tongban-Signature", "")):
        return "signature"
    nonces.add(nonce)
    return ""


def adapter_request(
    service_code: str,
    *,
    deadline_s: float = 10.0,
    message_id: str = "01JHTTPTEST000000000000001",
    **fields: str,
) -> AdapterRequest:
    """A verified request as the connector hands it to an adapter, its deadline ``deadline_s`` away
    (0: none)."""
    return AdapterRequest(
        message_id=message_id,
        service_code=service_code,
        requester_region="440300",
        applicant_kind="person",
        applicant_id=APPLICANT_ID,
        applicant_name="张三",
        fields=fields,
        deadline=time.time() + deadline_s if deadline_s else 0.0,
    )
