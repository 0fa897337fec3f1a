"""Tampered and misaddressed envelopes sent straight to Wuxi's connector over NATS.

The sender here is a hostile (or broken) peer that holds Shenzhen's real keys: each case changes one
thing, and the connector must refuse it with a signed Problem naming the check, write a REJECTED
ledger entry, and never reach the back end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ledger import Event
from tests.conftest import QD, SZ, WX, Stack
from tests.e2e.requests import pension
from tongban import envelope, messages, subjects
from tongban.config import Config
from tongban.ids import new_message_id
from tongban.keys import SigningKey
from tongban.node import load_registry, load_secrets
from tongban.v1 import envelope_pb2, exchange_pb2

Mutator = Callable[[envelope_pb2.Envelope], None]


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def craft(
    stack: Stack,
    *,
    to: str = WX,
    sealed_for: str | None = None,
    recipient_key_id: str | None = None,
    signer: SigningKey | None = None,
    created: float | None = None,
    deadline: float | None = None,
    request: exchange_pb2.ServiceRequest | None = None,
) -> messages.Built:
    cfg = Config.load(stack.state.config_path(SZ))
    secrets, registry = load_secrets(cfg), load_registry(cfg)
    kid, pub = registry.sealing_key_for(sealed_for or to)
    now = time.time()
    req = request or pension().request
    header = envelope_pb2.Header(
        message_id=new_message_id(),
        kind=envelope_pb2.MESSAGE_KIND_REQUEST,
        service_code=req.service_code,
        from_region=SZ,
        to_region=to,
        created_at=messages.timestamp(created or now),
        deadline=messages.timestamp(deadline or now + 10),
        purpose="KSTB_CASE_HANDLING",
        content_type=messages.REQUEST_CONTENT_TYPE,
        origin_system="dev-partner",
    )
    built = messages.build_sealed(
        header,
        exchange_pb2.RequestBody(request=req).SerializeToString(),
        recipient_key_id=kid,
        recipient=pub,
        signer=signer or secrets.signing,
    )
    if recipient_key_id is not None:  # claim one key in the header, seal for another
        header.recipient_key_id = recipient_key_id
        hb = header.SerializeToString()
        data = envelope.sign(hb, envelope_pb2.Envelope.FromString(built.data).body, signer or secrets.signing)
        return messages.Built(data, envelope.digest(data), header)
    return built


async def send(stack: Stack, data: bytes, service: str = "SBJFJLCX0001") -> exchange_pb2.Problem:
    """Send to Wuxi's RPC subject, verify the signed answer is Wuxi's rejection, return its Problem."""
    nc = await stack.nats(SZ)
    try:
        msg = await nc.request(subjects.rpc_subject(WX, service), data, timeout=5)
    finally:
        await nc.close()
    cfg = Config.load(stack.state.config_path(SZ))
    reply = envelope.verify(msg.data, load_registry(cfg), now_s=time.time())
    assert reply.header.from_region == WX
    assert reply.header.kind == envelope_pb2.MESSAGE_KIND_REJECTION
    assert reply.header.request_digest == envelope.digest(data)
    return exchange_pb2.Problem.FromString(reply.body)


async def assert_refused(stack: Stack, data: bytes, reason: str) -> None:
    problem = await send(stack, data)
    assert problem.reason == reason, problem
    assert problem.message
    wx = stack.nodes[WX]
    entries = await wx.ledger.entries()
    assert [e.event for e in entries] == [Event.REJECTED]
    assert entries[0].detail == reason
    assert entries[0].envelope_digest == envelope.digest(data)
    assert wx.backend_calls() == 0


def _header_flip(env: envelope_pb2.Envelope) -> None:
    at = env.header.find(b"KSTB_CASE_HANDLING")
    env.header = _flip(env.header, at + 2)


def _body_flip(env: envelope_pb2.Envelope) -> None:
    env.body = _flip(env.body, len(env.body) // 2)


def _sig_flip(env: envelope_pb2.Envelope) -> None:
    env.signatures[0].sig = _flip(env.signatures[0].sig, 7)


@pytest.mark.parametrize("mutate", [_header_flip, _body_flip, _sig_flip], ids=["header", "body", "signature"])
async def test_flipped_byte_refused(stack: Stack, mutate: Mutator) -> None:
    env = envelope_pb2.Envelope.FromString(craft(stack).data)
    mutate(env)
    await assert_refused(stack, env.SerializeToString(), envelope.Reason.SIGNATURE_INVALID)


async def test_body_sealed_for_another_region_refused(stack: Stack) -> None:
    await assert_refused(stack, craft(stack, sealed_for=QD).data, envelope.Reason.SEALED_FOR_ANOTHER_KEY)


async def test_body_sealed_for_another_region_under_our_key_id_refused(stack: Stack) -> None:
    cfg = Config.load(stack.state.config_path(SZ))
    wx_kid, _ = load_registry(cfg).sealing_key_for(WX)
    data = craft(stack, sealed_for=QD, recipient_key_id=wx_kid).data
    await assert_refused(stack, data, envelope.Reason.SEAL_INVALID)


async def test_unknown_key_id_refused(stack: Stack) -> None:
    await assert_refused(
        stack, craft(stack, signer=SigningKey.generate(SZ)).data, envelope.Reason.UNKNOWN_KEY
    )


async def test_wrong_recipient_refused(stack: Stack) -> None:
    await assert_refused(stack, craft(stack, to=QD).data, envelope.Reason.WRONG_RECIPIENT)


async def test_stale_request_refused(stack: Stack) -> None:
    await assert_refused(stack, craft(stack, created=time.time() - 3600).data, envelope.Reason.STALE)


async def test_request_from_the_future_refused(stack: Stack) -> None:
    await assert_refused(
        stack, craft(stack, created=time.time() + 3600).data, envelope.Reason.FROM_THE_FUTURE
    )


async def test_expired_request_never_processed(stack: Stack) -> None:
    await assert_refused(stack, craft(stack, deadline=time.time() - 1).data, envelope.Reason.EXPIRED)


async def test_garbage_refused(stack: Stack) -> None:
    await assert_refused(stack, b"\x0a\xff\xff\xff\x0fnot a protobuf", envelope.Reason.MALFORMED)


async def test_subject_mismatch_refused(stack: Stack) -> None:
    """A valid envelope replayed onto another service's subject is not served under that service."""
    data = craft(stack).data
    problem = await send(stack, data, service="WFZJLZM00001")
    assert problem.reason == "SUBJECT_MISMATCH"
    assert stack.nodes[WX].backend_calls() == 0
