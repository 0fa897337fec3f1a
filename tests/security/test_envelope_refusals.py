"""Every refusal of a hostile or broken request, named, with its exact answer.

Threat: a peer region (or anyone who can publish on its NATS subjects) sends Wuxi's connector an
envelope it must not serve: unsigned, altered, signed by the wrong key, stale, replayed, misaddressed,
sealed for someone else, for a service or partner the registry does not allow, oversized or not even
a protobuf; or a partner asks its own gateway for something the registry does not allow.

Each test changes one thing and asserts the exact refusal: at the connector, the signed Problem
(reason, gRPC code, message) Wuxi answers with; at the gateway, the gRPC status with its
``google.rpc.ErrorInfo`` reason. Then that nothing was delivered: no back-end call, no RECEIVED or
PROCESSED entry in any ledger, only the REJECTED entry the design writes for a refusal.

One stack (a hub and three leaf nats-servers, gateways and connectors for Shenzhen and Wuxi) serves
the whole module: each test sees only the ledger entries and back-end calls made since it started
(:class:`Scene`), and a test that swaps a registry puts the original back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats.errors
import pytest
import pytest_asyncio

from ledger import Event
from tests.conftest import QD, REGIONS, SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cases import submit_request
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import body_flip, header_flip, send, send_ok, sig_flip
from tests.helpers import eventually, nkey_connect, note
from tests.security.refusal_scene import (
    GARBAGE,
    OTHER_SERVICE,
    SERVICE,
    UNDECODABLE,
    Code,
    Edit,
    Scene,
    Sent,
    edit,
    edited,
    edited_registry,
    for_qingdao,
    forged,
    from_the_future,
    only_another_service,
    only_partner_szgov_ywtb,
    refused_by_connector,
    refused_by_gateway,
    reheadered,
    request_body,
    resigned,
    sealed,
    sealed_for_qingdao_under_our_key_id,
    sealing,
    sealing_key_as_signer,
    secrets,
    served_once,
    served_then_restarted,
    shenzhen_signing_key_expired,
    shenzhen_signing_key_not_yet_valid,
    signing_key,
    unnamed,
    validity,
    wuxi_does_not_provide,
)
from tongban.core import envelope, subjects
from tongban.core.errors import Reason
from tongban.core.keys import SigningKey
from tongban.ops.devstate import init_state
from tongban.ops.natsserver import Topology
from tongban.runtime.natsroles import NatsRole
from tongban.v1 import envelope_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root: Path = tmp_path_factory.mktemp("refusals")
    async with Topology(root / "nats", list(REGIONS)) as topology:
        state = init_state(
            root / "state",
            REGIONS,
            nats_urls={r: topology.url(r) for r in REGIONS},
            nats_seeds=topology.client_seeds(),
        )
        s = await start_stack(topology, state)
        try:
            yield s
        finally:
            await stop_stack(s)


@pytest_asyncio.fixture(loop_scope="module")
async def scene(stack: Stack) -> Scene:
    s = Scene(stack)
    await s.rebase()
    return s


# -- the control ---------------------------------------------------------------------------------


async def test_the_untouched_envelope_is_served(scene: Scene) -> None:
    """What the tests below change one thing of is served as it is, through each helper that builds
    them, so every refusal below is that one change's."""
    crafted = scene.craft()
    await send_ok(scene.stack, crafted.data)
    await send_ok(scene.stack, resigned(scene.stack, scene.craft().data, lambda h: None))
    await send_ok(scene.stack, sealed(scene.stack, scene.craft(), request_body()))
    wx = await scene.entries(WX)
    assert [e.event for e in wx] == [Event.RECEIVED, Event.PROCESSED] * 3
    assert scene.backend_calls() == 3
    assert scene.stack.nodes[WX].adapters[SERVICE].calls[crafted.header.message_id] == 1


# -- the connector's refusals: one change each, its exact answer ---------------------------------


@dataclass(frozen=True)
class Refusal:
    """``build`` changes one thing of a served envelope; Wuxi answers ``reason``, ``code`` and
    ``message`` (or what it gives for the stack).

    ``registry``: an edit of the registry Wuxi's connector holds while it is sent; ``before``: what
    happens between building and sending it; ``service``: whose RPC subject it is sent on."""

    build: Callable[[Scene], Sent]
    reason: Reason
    code: grpc.StatusCode
    message: str | Callable[[Scene], str]
    registry: Edit | None = None
    before: Callable[[Scene, Sent], Awaitable[None]] | None = None
    service: str = SERVICE


def case(id: str, *args: Any, **kw: Any) -> Any:
    return pytest.param(Refusal(*args, **kw), id=id)


BAD_SIGNATURE = (Reason.SIGNATURE_INVALID, Code.UNAUTHENTICATED, "signature does not verify")
REPLAYED = (Reason.REPLAYED, Code.ALREADY_EXISTS, "this message id was already received")
NOT_AUTHORISED = (Reason.NOT_AUTHORISED, Code.PERMISSION_DENIED, f"region {SZ} may not call {SERVICE} here")
MALFORMED = (Reason.ENVELOPE_MALFORMED, Code.INVALID_ARGUMENT)

# A table, laid out by hand: a row a change (a line or two), the answer at its end.
# fmt: off
REFUSALS = [
    # signature and signer
    case("unsigned", lambda s: edit(s, lambda env: env.ClearField("signatures")),
         Reason.ENVELOPE_UNSIGNED, Code.UNAUTHENTICATED, "envelope carries no signature"),
    case("tampered-header", lambda s: edit(s, header_flip), *BAD_SIGNATURE),
    case("tampered-body", lambda s: edit(s, body_flip), *BAD_SIGNATURE),
    case("tampered-signature", lambda s: edit(s, sig_flip), *BAD_SIGNATURE),
    case("signed-by-another-region-under-the-senders-key-id", lambda s: forged(s, QD), *BAD_SIGNATURE),
    case("signed-by-an-unregistered-key-under-the-senders-key-id", lambda s: forged(s, None),
         *BAD_SIGNATURE),
    # Qingdao signs, under its own key id, an envelope that says it comes from Shenzhen
    case("signed-by-another-regions-key", lambda s: s.sent(signer=signing_key(s.stack, QD)),
         Reason.KEY_REGION_MISMATCH, Code.UNAUTHENTICATED, "signing key belongs to another region"),
    case("unknown-key-id", lambda s: s.sent(signer=SigningKey.generate(SZ)),
         Reason.UNKNOWN_KEY, Code.UNAUTHENTICATED, "signing key id is not in the trust registry"),
    case("sealing-key-id-as-signer", sealing_key_as_signer, Reason.KEY_NOT_FOR_SIGNING, Code.UNAUTHENTICATED,
         lambda s: f"key {secrets(s.stack, SZ).sealing.key_id} is not a signing key"),
    case("expired-signing-key", Scene.sent, Reason.KEY_EXPIRED, Code.UNAUTHENTICATED, validity,
         registry=shenzhen_signing_key_expired),
    case("not-yet-valid-signing-key", Scene.sent, Reason.KEY_EXPIRED, Code.UNAUTHENTICATED, validity,
         registry=shenzhen_signing_key_not_yet_valid),
    case("unsupported-suite", lambda s: reheadered(s, suite="rsa1024+none"),
         Reason.UNSUPPORTED_SUITE, Code.UNAUTHENTICATED, "unsupported cryptographic suite"),
    # time and replay
    case("replayed-message", Scene.sent, *REPLAYED, before=served_once),
    case("replayed-message-after-a-connector-restart", Scene.sent, *REPLAYED, before=served_then_restarted),
    case("stale-timestamp",
         lambda s: s.sent(created=time.time() - s.stack.nodes[WX].cfg.connector.freshness_window_s - 5),
         Reason.STALE, Code.UNAUTHENTICATED, "request is older than the freshness window"),
    case("future-timestamp-beyond-clock-skew", from_the_future,
         Reason.FROM_THE_FUTURE, Code.UNAUTHENTICATED, "request is dated beyond the allowed clock skew"),
    case("deadline-passed", lambda s: s.sent(deadline=time.time() - 1),
         Reason.EXPIRED, Code.DEADLINE_EXCEEDED, "request deadline has passed"),
    # addressing and sealing: addressed (and sealed) to Qingdao; a valid pension request put on
    # another service's subject; sealed for Qingdao; the request sealed inside for Qingdao
    case("wrong-receiving-region", lambda s: s.sent(to=QD),
         Reason.WRONG_RECIPIENT, Code.FAILED_PRECONDITION, f"request is addressed to {QD}, not {WX}"),
    case("wrong-subject", Scene.sent, Reason.SUBJECT_MISMATCH, Code.FAILED_PRECONDITION,
         "request arrived on a subject that does not match its header", service=OTHER_SERVICE),
    case("body-sealed-for-another-region", lambda s: s.sent(sealed_for=QD), Reason.SEALED_FOR_ANOTHER_KEY,
         Code.UNAUTHENTICATED, "body is sealed for a key this region does not hold"),
    case("body-sealed-for-another-region-under-our-key-id", sealed_for_qingdao_under_our_key_id,
         Reason.SEAL_INVALID, Code.UNAUTHENTICATED, "sealed body does not open with our key"),
    case("sealed-request-not-matching-its-header", lambda s: sealing(s, for_qingdao()),
         Reason.HEADER_BODY_MISMATCH, Code.INVALID_ARGUMENT, "sealed request does not match its header"),
    # authorisation: envelopes Shenzhen's gateway should never have sent (from partner dev-partner)
    case("unauthorised-partner", Scene.sent, *NOT_AUTHORISED, registry=only_partner_szgov_ywtb),
    case("unauthorised-service", Scene.sent, *NOT_AUTHORISED, registry=only_another_service),
    case("service-not-provided", Scene.sent, *NOT_AUTHORISED, registry=wuxi_does_not_provide),
    # shape: not a protobuf; nothing; a header that does not decode; correctly signed by Shenzhen but
    # a response; signed and sealed correctly, but what is sealed is not a RequestBody
    case("garbage-bytes", lambda s: unnamed(GARBAGE), *MALFORMED, "envelope does not decode"),
    case("empty-message", lambda s: unnamed(b""), *MALFORMED, "header lacks message id, sender or kind"),
    case("header-that-does-not-decode",
         lambda s: unnamed(edited(s.craft().data, lambda env: setattr(env, "header", UNDECODABLE))),
         *MALFORMED, "envelope does not decode"),
    case("envelope-that-is-not-a-request", lambda s: reheadered(s, kind=envelope_pb2.MESSAGE_KIND_RESPONSE),
         *MALFORMED, "not a request"),
    case("sealed-body-that-does-not-decode", lambda s: sealing(s, GARBAGE), *MALFORMED,
         "sealed body does not decode"),
]
# fmt: on


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_the_connector_refuses(scene: Scene, refusal: Refusal) -> None:
    sent = refusal.build(scene)
    if refusal.before is not None:
        await refusal.before(scene, sent)
    message = refusal.message if isinstance(refusal.message, str) else refusal.message(scene)
    with edited_registry(scene.stack, refusal.registry, at="connector"):
        await refused_by_connector(
            scene,
            sent.data,
            reason=refusal.reason,
            code=refusal.code,
            message=message,
            message_id=sent.message_id,
            service=refusal.service,
        )


# -- the gateway's refusals ----------------------------------------------------------------------

NOT_ALLOWED = f"the registry does not allow dev-partner of {SZ} to call {SERVICE} in {WX}"
NOT_PROVIDED = {"request.service_code": "the target region does not provide this service"}

# fmt: off
GATEWAY_REFUSALS = [  # registry edit; REJECTED detail; code, reason, message, field violations
    pytest.param(only_partner_szgov_ywtb, "NOT_AUTHORISED",
                 Code.PERMISSION_DENIED, "NOT_AUTHORISED", NOT_ALLOWED, {}, id="unauthorised-partner"),
    pytest.param(only_another_service, "NOT_AUTHORISED",
                 Code.PERMISSION_DENIED, "NOT_AUTHORISED", NOT_ALLOWED, {}, id="unauthorised-service"),
    pytest.param(wuxi_does_not_provide, "INVALID_REQUEST: request.service_code", Code.INVALID_ARGUMENT,
                 "INVALID_REQUEST", "request does not match the catalogue", NOT_PROVIDED,
                 id="service-not-provided"),
]
# fmt: on


@pytest.mark.parametrize(("edit", "detail", "code", "reason", "message", "violations"), GATEWAY_REFUSALS)
async def test_the_gateway_refuses(
    scene: Scene, edit: Edit, detail: str, code: grpc.StatusCode, reason: str, message: str, violations: Any
) -> None:
    with edited_registry(scene.stack, edit, at="gateway"):
        d = await refused_by_gateway(scene, pension(), detail=detail)
    assert (d.code, d.reason, d.message, d.violations) == (code, reason, message, violations)


# -- the rest: refusals before the connector, and what an answer alone does not show --------------


async def test_oversized_grpc_request_is_refused(scene: Scene) -> None:
    limit = scene.stack.nodes[SZ].cfg.gateway.max_message_bytes
    q = pension()
    q.request.governance.purpose_text = "x" * (limit + 1)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await scene.stack.stub(SZ).Query(q, timeout=5)
    # gRPC refuses it before any handler runs: no ErrorInfo, and no ledger entry anywhere.
    d = details_of(exc.value)
    assert (d.code, d.reason) == (Code.RESOURCE_EXHAUSTED, "")
    assert d.message == f"SERVER: Received message larger than max ({q.ByteSize()} vs. {limit})"
    assert await scene.entries(SZ) == [] and await scene.entries(WX) == []
    assert scene.backend_calls() == 0


async def test_oversized_nats_message_never_reaches_the_connector(scene: Scene) -> None:
    """Above the servers' max_payload, nats-py does not send it, and a client that sends it anyway
    is cut off by the server: Wuxi's connector never sees it."""
    stack = scene.stack
    subject = subjects.rpc_subject(WX, SERVICE)
    nc = await stack.nats(SZ)
    try:
        too_big = b"\0" * (nc.max_payload + 1)
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.request(subject, too_big, timeout=5)
    finally:
        await nc.close()

    # A client that ignores the limit: the server refuses the PUB on its announced size, before
    # reading the payload, and closes the connection.
    host, port = stack.topology.url(SZ).removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ")
        writer.write(nkey_connect(info, stack.topology.client_seed(SZ, NatsRole.ADMIN)))
        writer.write(f"PUB {subject} _INBOX_{SZ}.raw {len(too_big)}\r\n".encode())
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"-ERR 'Maximum Payload Violation'\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert await scene.entries(WX) == []
    # Wuxi's connector answers the next request on that subject: it was listening all along.
    await send_ok(stack, scene.craft().data)
    assert [e.event for e in await scene.entries(WX)] == [Event.RECEIVED, Event.PROCESSED]
    assert scene.backend_calls() == 1


async def test_bidi_override_in_a_name_is_refused_by_the_connector_too(scene: Scene) -> None:
    """A sending gateway that skipped the check: the provider applies the character rule itself."""
    request = pension().request
    request.applicant.name = "\u202e明小王"
    built = scene.craft(request=request)
    problem = await send(scene.stack, built.data)
    assert (problem.reason, problem.code) == ("INVALID_REQUEST", Code.INVALID_ARGUMENT.value[0])
    assert [v.field for v in problem.field_violations] == ["request.applicant.name"]
    assert "U+202E" in problem.field_violations[0].description
    assert scene.backend_calls() == 0


async def test_a_case_copied_from_the_stream_onto_the_query_subject_is_refused(scene: Scene) -> None:
    """An insider copies a Submit envelope out of Wuxi's inbound stream and republishes it, within
    its freshness window, on the Query subject with Shenzhen's inbox as the reply: refused by kind,
    the back end is not called again, Wuxi's ledger gains a REJECTED and no second RECEIVED."""
    stack = scene.stack
    wx_nc = await stack.nats(WX)
    copied: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()

    async def copy(msg: Any) -> None:
        if not copied.done():
            copied.set_result((msg.subject, bytes(msg.data)))

    try:
        await wx_nc.subscribe(subjects.request_wildcard(WX), cb=copy)
        await wx_nc.flush()
        await scene.rebase()
        receipt = await stack.stub(SZ).Submit(submit_request(key=f"kind-{time.time_ns()}"), timeout=10)
        subject, data = await asyncio.wait_for(copied, 10)
    finally:
        await wx_nc.close()
    _, header = envelope.parse(data)
    assert header.kind == envelope_pb2.MESSAGE_KIND_CASE_REQUEST and header.case_no == receipt.case_no
    mid = receipt.message_id

    async def handled() -> bool:
        return [e.event for e in await scene.entries(WX) if e.message_id == mid][:2] == [
            Event.RECEIVED,
            Event.PROCESSED,
        ]

    await eventually(handled, what="the case handled in Wuxi")
    calls = scene.backend_calls()
    assert calls == 1
    problem = await send(stack, data, subject.rsplit(".", 1)[-1])
    assert (problem.reason, problem.code) == ("KIND_MISMATCH", Code.FAILED_PRECONDITION.value[0])
    assert scene.backend_calls() == calls
    assert [(e.event, note(e)) for e in await scene.entries(WX) if e.message_id == mid][-1] == (
        Event.REJECTED,
        "KIND_MISMATCH",
    )
    assert [e.event for e in await scene.entries(WX) if e.message_id == mid].count(Event.RECEIVED) == 1


async def test_a_query_put_into_the_inbound_stream_is_dead_lettered(scene: Scene) -> None:
    """The other way round: a Query envelope published into Wuxi's inbound stream is poison."""
    built = scene.craft()
    nc = await scene.stack.nats(SZ)
    try:
        await nc.jetstream().publish(
            subjects.request_subject(WX, SERVICE),
            built.data,
            headers={subjects.Header.MSG_ID: built.header.message_id},
        )
    finally:
        await nc.close()

    async def refused() -> list[tuple[str, str]]:
        return [
            (e.event, note(e)) for e in await scene.entries(WX) if e.message_id == built.header.message_id
        ]

    await eventually(refused, what="the query refused by the case worker")
    assert [event for event, _ in await refused()] == [Event.REJECTED]
    assert "KIND_MISMATCH" in (await refused())[0][1]
    assert scene.backend_calls() == 0


async def test_malformed_grpc_request_body_is_refused(scene: Scene) -> None:
    """Bytes that are not a QueryRequest, sent as one."""
    channel = grpc.aio.insecure_channel(scene.stack.nodes[SZ].address)
    try:
        query = channel.unary_unary("/tongban.v1.Exchange/Query")  # bytes in, bytes out
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await query(b"\x0a\xff\xff\xff\x0fnot a protobuf", timeout=5)
    finally:
        await channel.close()
    assert await scene.entries(SZ) == [] and await scene.entries(WX) == []
    assert scene.backend_calls() == 0
    d = details_of(exc.value)
    assert (d.code, d.reason) == (Code.INVALID_ARGUMENT, "REQUEST_MALFORMED"), (d.code, d.message)
    assert d.message == "the request does not decode as tongban.v1.QueryRequest"
    assert "Wire format" not in d.message  # the parser's own words are no answer for a partner
