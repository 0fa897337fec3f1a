"""A region's case system receiving deliveries on its webhook: a real aiohttp server that checks each
POST's signature by the documented scheme (computed here independently of the connector's code)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

SECRET = b"a webhook secret of the region's case system"


def signed_by(secret: bytes, header: str, body: bytes) -> bool:
    """``X-Tongban-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, within 5 min."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    t = fields.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > 300:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Receiver:
    """The webhook endpoint. ``failing``: answer that many POSTs with ``fail_status`` first (a
    receiver in trouble), then 200.

    Attributes:
        received: the deliveries taken (the JSON bodies), in order.
        answers: every status answered, in order.
        forged: POSTs whose signature did not check out.
    """

    def __init__(self, secret: bytes = SECRET, *, failing: int = 0, fail_status: int = 503) -> None:
        self.secret = secret
        self.failing = failing
        self.fail_status = fail_status
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.forged = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signed_by(self.secret, request.headers.get("X-Tongban-Signature", ""), body):
            self.forged += 1
            return self._answer(401)
        delivery = json.loads(body)
        if request.headers.get("X-Tongban-Delivery") != delivery.get("deliveryId"):
            return self._answer(400)
        if self.failing > 0:
            self.failing -= 1
            return self._answer(self.fail_status)
        self.received.append(delivery)
        return self._answer(200)

    def _answer(self, status: int) -> web.Response:
        self.answers.append(status)
        return web.Response(status=status)

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_post("/deliveries", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    def url(self, port: int = 0) -> str:
        return f"http://127.0.0.1:{port or self.port}/deliveries"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
