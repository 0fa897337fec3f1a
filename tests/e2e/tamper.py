"""Crafting envelopes as a hostile (or broken) peer holding Shenzhen's real keys would, and sending
them straight to Wuxi's connector over NATS. The refusals themselves are tested in
tests/security/test_envelope_refusals.py."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import SZ, WX, Stack
from tests.e2e.requests import pension
from tongban.core import envelope, messages, subjects
from tongban.core.keys import SigningKey
from tongban.core.message_ids import new_message_id
from tongban.runtime.config import Config
from tongban.runtime.node import load_registry, load_secrets
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
    seal_to: str | None = None,
) -> messages.Built:
    cfg = Config.load(stack.state.config_path(SZ))
    registry = load_registry(cfg)
    secrets = load_secrets(cfg, registry)
    kid, pub = registry.sealing_key_for(sealed_for or to)
    if seal_to is not None:  # one particular key of the recipient (e.g. the older one in a rotation)
        kid, pub = seal_to, registry.sealing_public(seal_to)
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


async def ask_wuxi(stack: Stack, data: bytes, service: str = "SBJFJLCX0001") -> bytes:
    """Send an envelope from Shenzhen's leaf to Wuxi's RPC subject; the raw answer."""
    nc = await stack.nats(SZ)
    try:
        msg = await nc.request(subjects.rpc_subject(WX, service), data, timeout=5)
    finally:
        await nc.close()
    return bytes(msg.data)


async def send_ok(stack: Stack, data: bytes) -> bytes:
    """Send to Wuxi's RPC subject; the answer must be a response (served)."""
    answer = await ask_wuxi(stack, data)
    _, header = envelope.parse(answer)
    assert header.kind == envelope_pb2.MESSAGE_KIND_RESPONSE
    return answer


async def send(stack: Stack, data: bytes, service: str = "SBJFJLCX0001") -> exchange_pb2.Problem:
    """Send to Wuxi's RPC subject, verify the signed answer is Wuxi's rejection, return its Problem."""
    answer = await ask_wuxi(stack, data, service)
    cfg = Config.load(stack.state.config_path(SZ))
    reply = envelope.verify(answer, load_registry(cfg), now_s=time.time())
    assert reply.header.from_region == WX
    assert reply.header.kind == envelope_pb2.MESSAGE_KIND_REJECTION
    assert reply.header.request_digest == envelope.digest(data)
    return exchange_pb2.Problem.FromString(reply.body)


def header_flip(env: envelope_pb2.Envelope) -> None:
    at = env.header.find(b"KSTB_CASE_HANDLING")
    env.header = _flip(env.header, at + 2)


def body_flip(env: envelope_pb2.Envelope) -> None:
    env.body = _flip(env.body, len(env.body) // 2)


def sig_flip(env: envelope_pb2.Envelope) -> None:
    env.signatures[0].sig = _flip(env.signatures[0].sig, 7)
