"""What travels between the regions is changed on the way, replayed or forged; the receiving
connector re-checks the registry on its own. All through the real Shenzhen gateway.

A relay (a real NATS subscriber in Wuxi's connector queue group, standing where a compromised hop
would) takes Wuxi's place on the RPC subject and hands what it chooses to Wuxi's connector."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from ledger import Event
from tests.conftest import QD, SZ, WX, Stack, resigned_registry, wait_visible
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.helpers import note
from tongban.core import envelope, messages, subjects
from tongban.core.errors import Reason
from tongban.runtime.config import Config
from tongban.runtime.node import load_secrets
from tongban.v1 import envelope_pb2, registry_pb2

Relay = Callable[[str, bytes], Awaitable[bytes]]


@pytest.fixture
async def relay(stack: Stack) -> AsyncIterator[Callable[[Relay], Awaitable[None]]]:
    """install(handler): Wuxi's connector stops listening; handler answers its RPC subject."""
    conns: list[Any] = []

    async def install(handler: Relay) -> None:
        connector = stack.nodes[WX].connector
        assert connector is not None
        await connector.stop()
        nc = await stack.nats(WX)
        conns.append(nc)

        async def on_msg(msg: Any) -> None:
            await msg.respond(await handler(msg.subject, msg.data))

        await nc.subscribe(subjects.rpc_wildcard(WX), queue=subjects.connector_queue(WX), cb=on_msg)
        await wait_visible(stack, nc, SZ, f"{subjects.inbox_prefix(WX)}.probe.relay")

    yield install
    for nc in conns:
        await nc.close()


def _flip(data: bytes, part: str) -> bytes:
    env = envelope_pb2.Envelope.FromString(data)
    if part == "signature":
        sig = bytearray(env.signatures[0].sig)
        sig[3] ^= 1
        env.signatures[0].sig = bytes(sig)
    elif part == "header":
        at = env.header.find(b"KSTB_CASE_HANDLING")
        h = bytearray(env.header)
        h[at + 1] ^= 1
        env.header = bytes(h)
    else:
        b = bytearray(env.body)
        b[len(b) // 2] ^= 1
        env.body = bytes(b)
    return env.SerializeToString()


@pytest.mark.parametrize("part", ["header", "body", "signature"])
async def test_altered_in_transit_is_refused_with_a_clear_error(
    stack: Stack, relay: Callable[[Relay], Awaitable[None]], part: str
) -> None:
    connector = stack.nodes[WX].connector
    assert connector is not None

    async def tamper(subject: str, data: bytes) -> bytes:
        return await connector.handle(subject, _flip(data, part))

    await relay(tamper)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert d.reason == Reason.SIGNATURE_INVALID
    assert "altered in transit" in d.message
    sz = await stack.nodes[SZ].ledger.entries()
    assert [(e.event, note(e)) for e in sz] == [
        (Event.SUBMITTED, ""),
        (Event.REJECTED, "REMOTE: SIGNATURE_INVALID (request altered in transit)"),
    ]
    wx = await stack.nodes[WX].ledger.entries()
    assert [(e.event, note(e)) for e in wx] == [(Event.REJECTED, "SIGNATURE_INVALID")]
    assert stack.nodes[WX].backend_calls() == 0


async def test_replayed_answer_is_refused_by_the_gateway(
    stack: Stack, relay: Callable[[Relay], Awaitable[None]]
) -> None:
    """A genuine Wuxi answer to an earlier request is not accepted as the answer to a new one."""
    connector = stack.nodes[WX].connector
    assert connector is not None
    kept: list[bytes] = []

    async def replay_first(subject: str, data: bytes) -> bytes:
        if not kept:
            kept.append(await connector.handle(subject, data))
        return kept[0]

    await relay(replay_first)
    await stack.stub(SZ).Query(pension(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.DATA_LOSS and d.reason == "REPLY_INVALID"
    assert [e.event for e in await stack.nodes[SZ].ledger.entries()][-1] == Event.REJECTED


async def test_answer_signed_by_another_region_is_refused(
    stack: Stack, relay: Callable[[Relay], Awaitable[None]]
) -> None:
    """Qingdao (a registered region with valid keys) answers in Wuxi's place: refused."""
    qd = load_secrets(Config.load(stack.state.config_path(QD)))
    sz_cfg = Config.load(stack.state.config_path(SZ))
    from tongban.runtime.node import load_registry

    registry = load_registry(sz_cfg)

    async def impostor(subject: str, data: bytes) -> bytes:
        _, h = envelope.parse(data)
        kid, pub = registry.sealing_key_for(SZ)
        reply = envelope_pb2.Header(
            message_id="01JDIMPOSTOR00000000000000",
            kind=envelope_pb2.MESSAGE_KIND_RESPONSE,
            service_code=h.service_code,
            from_region=QD,
            to_region=SZ,
            created_at=messages.timestamp(time.time()),
            in_reply_to=h.message_id,
            request_digest=envelope.digest(data),
        )
        return messages.build_sealed(reply, b"", recipient_key_id=kid, recipient=pub, signer=qd.signing).data

    await relay(impostor)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    assert details_of(exc.value).reason == "REPLY_INVALID"


def _deny_shenzhen(doc: registry_pb2.TrustRegistry) -> None:
    keep = [r for r in doc.access_rules if not (r.caller_region == SZ and r.provider_region == WX)]
    del doc.access_rules[:]
    doc.access_rules.extend(keep)


def _revoke_shenzhen_signing(doc: registry_pb2.TrustRegistry) -> None:
    for region in doc.regions:
        if region.code == SZ:
            for key in region.keys:
                if key.use == registry_pb2.KEY_USE_SIGNING:
                    key.revoked = True


@pytest.mark.parametrize(
    ("edit", "code", "reason"),
    [
        (_deny_shenzhen, grpc.StatusCode.PERMISSION_DENIED, "NOT_AUTHORISED"),
        (_revoke_shenzhen_signing, grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED"),
    ],
    ids=["access-rule-removed", "signing-key-revoked"],
)
async def test_connector_checks_the_registry_itself(
    stack: Stack, edit: Callable[[registry_pb2.TrustRegistry], None], code: grpc.StatusCode, reason: str
) -> None:
    """Shenzhen's gateway still believes it may call; Wuxi's connector, holding a newer registry,
    refuses — the sending gateway is never trusted alone."""
    connector = stack.nodes[WX].connector
    assert connector is not None
    connector.registry = resigned_registry(stack.state, edit)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    d = details_of(exc.value)
    assert (d.code, d.reason) == (code, reason)
    assert [note(e) for e in await stack.nodes[WX].ledger.entries()] == [reason]
    assert stack.nodes[WX].backend_calls() == 0
