"""The HTTP adapter behind a real connector: a partner's Query from Shenzhen is answered by Wuxi's
REST back end, and each of its failures reaches the partner with its gRPC status and reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from connectors.backends.http import HttpBackend
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.connectors.backends.http_backend import (
    PENSION,
    BackendApp,
    Reply,
    hold,
    json_reply,
    status_reply,
)
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config


@dataclass
class Scene:
    stack: Stack
    app: BackendApp

    async def query(self, reply: Reply, timeout: float = 5) -> grpc.aio.AioRpcError | dict[str, object]:
        self.app.reply = reply
        try:
            answer = await self.stack.stub(SZ).Query(pension(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return exc
        return dict(answer.data)


@pytest.fixture
async def scene(topology: Topology, state: DevState, tmp_path: Path) -> AsyncIterator[Scene]:
    async with BackendApp() as app:
        backend = HttpBackend.from_table(
            "shebao", {"kind": "http", "base_url": app.base_url, "retries": 0}, Config(base_dir=tmp_path)
        )
        service = backend.service(
            PENSION,
            {
                "path": "/persons/{applicant.id}/pension",
                "response": {"status": "$.data.state", "total_months": "$.data.months"},
            },
            Catalogue.load().items[PENSION],
        )
        try:
            stack = await start_stack(topology, state, adapters={WX: {PENSION: service}})
            try:
                yield Scene(stack, app)
            finally:
                app.released.set()
                await stop_stack(stack)
        finally:
            await backend.aclose()


async def test_a_query_answered_by_a_rest_back_end(scene: Scene) -> None:
    answer = await scene.query(json_reply({"data": {"state": "正常参保", "months": 220, "secret": "x"}}))
    assert answer == {"status": "正常参保", "total_months": 220.0}
    [seen] = scene.app.seen
    assert seen.raw_path.startswith("/api/persons/") and seen.headers["traceparent"]

    for reply, code, reason, says in [
        (status_reply(404), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "has no record"),
        (status_reply(409), grpc.StatusCode.FAILED_PRECONDITION, "BACKEND_REFUSED", "refused the request"),
        (status_reply(429), grpc.StatusCode.RESOURCE_EXHAUSTED, "BACKEND_BUSY", "is busy"),
        (status_reply(500), grpc.StatusCode.UNAVAILABLE, "BACKEND_FAILURE", "is unavailable"),
    ]:
        error = await scene.query(reply)
        assert isinstance(error, grpc.aio.AioRpcError)
        d = details_of(error)
        assert (d.code, d.reason) == (code, reason)
        assert says in d.message, (reason, d.message)
        assert "440304199001011234" not in d.message  # the back end's error page stays there

    error = await scene.query(hold(json_reply({})), timeout=1.0)
    assert isinstance(error, grpc.aio.AioRpcError)
    d = details_of(error)
    assert (d.code, d.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT")
