"""Dev mode: tokens instead of certificates (only there), and a gateway that says what it is."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tongban.core.errors import ConfigError
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config

TOKEN = "dev-token-0123456789abcdef"


@pytest.fixture
async def token_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(topology, state, config={"gateway": {"dev_tokens": [f"szgov-ywtb:{TOKEN}"]}})
    try:
        yield s
    finally:
        await stop_stack(s)


def _query(stack: Stack, token: str | None) -> grpc.aio.UnaryUnaryCall:  # type: ignore[type-arg]
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return stack.stub(SZ).Query(pension(), timeout=10, metadata=metadata)


@pytest.mark.parametrize(
    ("token", "reason"), [(None, "TOKEN_MISSING"), ("not-the-token-at-all", "TOKEN_INVALID")]
)
async def test_dev_token_missing_or_wrong_is_unauthenticated(
    token_stack: Stack, token: str | None, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _query(token_stack, token)
    d = details_of(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert TOKEN not in d.message
    assert await token_stack.nodes[SZ].ledger.size() == 0
    assert token_stack.nodes[WX].backend_calls() == 0


async def test_dev_token_is_served_as_its_system_and_says_dev_mode(token_stack: Stack) -> None:
    call = _query(token_stack, TOKEN)
    answer = await call
    assert answer.responder_region == WX
    assert ("tongban-mode", "dev") in tuple(await call.initial_metadata())


def test_dev_tokens_outside_dev_mode_are_refused(state: DevState) -> None:
    cfg = Config.load(state.config_path(SZ))
    cfg.gateway.dev_mode = False
    cfg.gateway.tls_cert = cfg.gateway.tls_key = cfg.gateway.client_ca = "x.pem"
    cfg.gateway.dev_tokens = [f"szgov-ywtb:{TOKEN}"]
    with pytest.raises(ConfigError, match="dev mode only"):
        cfg.validate()


def test_short_dev_tokens_are_refused(state: DevState) -> None:
    cfg = Config.load(state.config_path(SZ))
    cfg.gateway.dev_tokens = ["szgov-ywtb:short"]
    with pytest.raises(ConfigError, match="16"):
        cfg.validate()
