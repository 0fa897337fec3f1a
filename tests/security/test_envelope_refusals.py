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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import grpc
import nats.errors
import pytest
import pytest_asyncio

from connectors.runtime import Connector
from ledger import Entry, Event
from tests.conftest import QD, REGIONS, SZ, WX, Stack, resigned_registry, start_stack, stop_stack
from tests.e2e.cases import submit_request
from tests.e2e.grpc_errors import Details, details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import body_flip, craft, header_flip, send, send_ok, sig_flip
from tests.helpers import eventually, nkey_connect, note
from tongban.core import envelope, messages, subjects
from tongban.core.errors import Reason
from tongban.core.keys import SigningKey
from tongban.core.registry import Registry
from tongban.ops.devstate import init_state
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import load_registry, load_secrets
from tongban.v1 import envelope_pb2, exchange_pb2, registry_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICE = "SBJFJLCX0001"  # what craft() and pension() ask Wuxi for
OTHER_SERVICE = "WFZJLZM00001"
Code = grpc.StatusCode
Edit = Callable[[registry_pb2.TrustRegistry], None]


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


@dataclass
class Scene:
    """One test's view of the shared stack: what the test caused (ledger entries and back-end calls
    since it started) and envelopes with message ids no other test of the module used.

    craft() names a message by the millisecond it was made in, and Wuxi's connector remembers every
    id for the freshness window: two envelopes made in one millisecond would be refused as REPLAYED.
    """

    stack: Stack
    sizes: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    async def rebase(self) -> None:
        """From now on, count only what comes after this point."""
        self.sizes = {region: await node.ledger.size() for region, node in self.stack.nodes.items()}
        self.calls = self.stack.nodes[WX].backend_calls()

    def craft(self, **kw: Any) -> messages.Built:
        """craft() (tests/e2e/tamper.py): a fresh message id each time."""
        return craft(self.stack, **kw)

    async def entries(self, region: str) -> list[Entry]:
        return await self.stack.nodes[region].ledger.entries(self.sizes[region])

    def backend_calls(self) -> int:
        return self.stack.nodes[WX].backend_calls() - self.calls


@pytest_asyncio.fixture(loop_scope="module")
async def scene(stack: Stack) -> Scene:
    s = Scene(stack)
    await s.rebase()
    return s


class _HoldsRegistry(Protocol):
    registry: Registry


def _connector(stack: Stack) -> Connector:
    connector = stack.nodes[WX].connector
    assert connector is not None
    return connector


@contextlib.contextmanager
def edited_registry(stack: Stack, edit: Edit, *, at: Literal["connector", "gateway"]) -> Iterator[None]:
    """Wuxi's connector (``at="connector"``) or Shenzhen's gateway (``at="gateway"``) holds the dev
    registry with ``edit`` applied, re-signed by the root, until the block ends."""
    holder: _HoldsRegistry
    if at == "connector":
        holder = _connector(stack)
    else:
        gateway = stack.nodes[SZ].gateway
        assert gateway is not None and gateway.desk is not None
        holder = gateway.desk.core
    original = holder.registry
    holder.registry = resigned_registry(stack.state, edit)
    try:
        yield
    finally:
        holder.registry = original


# -- registry edits ------------------------------------------------------------------------------


def _shenzhen_to_wuxi(doc: registry_pb2.TrustRegistry) -> list[registry_pb2.AccessRule]:
    rules = [r for r in doc.access_rules if r.caller_region == SZ and r.provider_region == WX]
    assert rules
    return rules


def _only_partner_szgov_ywtb(doc: registry_pb2.TrustRegistry) -> None:
    """Shenzhen may call Wuxi only from its 一网通办 platform, not from the dev partner."""
    for rule in _shenzhen_to_wuxi(doc):
        rule.caller_system = "szgov-ywtb"


def _only_another_service(doc: registry_pb2.TrustRegistry) -> None:
    """Shenzhen may call Wuxi for another service, not for the pension record."""
    for rule in _shenzhen_to_wuxi(doc):
        rule.service_code = OTHER_SERVICE


def _wuxi_does_not_provide(doc: registry_pb2.TrustRegistry) -> None:
    for region in doc.regions:
        if region.code == WX:
            keep = [s for s in region.provided_services if s != SERVICE]
            del region.provided_services[:]
            region.provided_services.extend(keep)


def _shenzhen_signing_key(doc: registry_pb2.TrustRegistry) -> registry_pb2.RegionKey:
    region = next(r for r in doc.regions if r.code == SZ)
    return next(k for k in region.keys if k.use == registry_pb2.KEY_USE_SIGNING)


def _shenzhen_signing_key_expired(doc: registry_pb2.TrustRegistry) -> None:
    _shenzhen_signing_key(doc).not_after.CopyFrom(messages.timestamp(time.time() - 60))


def _shenzhen_signing_key_not_yet_valid(doc: registry_pb2.TrustRegistry) -> None:
    _shenzhen_signing_key(doc).not_before.CopyFrom(messages.timestamp(time.time() + 3600))


# -- envelopes -----------------------------------------------------------------------------------


def _signing_key(stack: Stack, region: str) -> SigningKey:
    return load_secrets(Config.load(stack.state.config_path(region))).signing


def _resigned(stack: Stack, data: bytes, edit: Callable[[envelope_pb2.Header], None]) -> bytes:
    """``data`` with its header edited and signed again with Shenzhen's real key. The body stays
    sealed under the old header: the checks these edits meet come before the seal is opened."""
    env = envelope_pb2.Envelope.FromString(data)
    header = envelope_pb2.Header.FromString(env.header)
    edit(header)
    return envelope.sign(header.SerializeToString(deterministic=True), env.body, _signing_key(stack, SZ))


def _sealed(stack: Stack, built: messages.Built, plaintext: bytes) -> bytes:
    """``built``'s header with ``plaintext`` sealed for Wuxi under it, signed with Shenzhen's real key."""
    header = envelope_pb2.Header()
    header.CopyFrom(built.header)
    kid, recipient = load_registry(Config.load(stack.state.config_path(SZ))).sealing_key_for(WX)
    return messages.build_sealed(
        header, plaintext, recipient_key_id=kid, recipient=recipient, signer=_signing_key(stack, SZ)
    ).data


def _request_body(request: exchange_pb2.ServiceRequest | None = None) -> bytes:
    return exchange_pb2.RequestBody(request=request or pension().request).SerializeToString()


def _edited(data: bytes, edit: Callable[[envelope_pb2.Envelope], None]) -> bytes:
    env = envelope_pb2.Envelope.FromString(data)
    edit(env)
    return env.SerializeToString()


# -- assertions ----------------------------------------------------------------------------------


async def refused_by_connector(
    scene: Scene,
    data: bytes,
    *,
    reason: str,
    code: grpc.StatusCode,
    message: str,
    message_id: str,
    service: str = SERVICE,
) -> None:
    """Wuxi answers ``data`` with a signed Problem saying exactly this, records REJECTED and nothing
    else under ``message_id``; neither its back end nor Shenzhen's ledger sees anything."""
    problem = await send(scene.stack, data, service)
    assert (problem.reason, problem.code, problem.message) == (reason, code.value[0], message), problem
    assert not problem.field_violations
    wx = await scene.entries(WX)
    assert [(e.event, note(e), e.message_id, e.envelope_digest) for e in wx] == [
        (Event.REJECTED, reason, message_id, envelope.digest(data))
    ]
    assert scene.backend_calls() == 0
    assert await scene.entries(SZ) == []


async def refused_by_gateway(scene: Scene, request: exchange_pb2.QueryRequest, *, detail: str) -> Details:
    """Shenzhen's gateway refuses ``request``: one REJECTED entry (``detail``), nothing sent on."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await scene.stack.stub(SZ).Query(request, timeout=5)
    sz = await scene.entries(SZ)
    assert [(e.event, note(e), e.peer_region, e.service_code) for e in sz] == [
        (Event.REJECTED, detail, WX, SERVICE)
    ]
    assert await scene.entries(WX) == []
    assert scene.backend_calls() == 0
    return details_of(exc.value)


def _digest_id(data: bytes) -> str:
    """How the connector names a request whose header gives no usable message id."""
    return "sha256:" + envelope.digest(data)[:8].hex()


# -- the control ---------------------------------------------------------------------------------


async def test_the_untouched_envelope_is_served(scene: Scene) -> None:
    """What the tests below change one thing of is served as it is, through each helper that builds
    them, so every refusal below is that one change's."""
    crafted = scene.craft()
    await send_ok(scene.stack, crafted.data)
    await send_ok(scene.stack, _resigned(scene.stack, scene.craft().data, lambda h: None))
    await send_ok(scene.stack, _sealed(scene.stack, scene.craft(), _request_body()))
    wx = await scene.entries(WX)
    assert [e.event for e in wx] == [Event.RECEIVED, Event.PROCESSED] * 3
    assert scene.backend_calls() == 3
    assert scene.stack.nodes[WX].adapters[SERVICE].calls[crafted.header.message_id] == 1


# -- signature and signer ------------------------------------------------------------------------


async def test_unsigned_envelope_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await refused_by_connector(
        scene,
        _edited(built.data, lambda env: env.ClearField("signatures")),
        reason=Reason.ENVELOPE_UNSIGNED,
        code=Code.UNAUTHENTICATED,
        message="envelope carries no signature",
        message_id=built.header.message_id,
    )


async def test_tampered_header_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await refused_by_connector(
        scene,
        _edited(built.data, header_flip),
        reason=Reason.SIGNATURE_INVALID,
        code=Code.UNAUTHENTICATED,
        message="signature does not verify",
        message_id=built.header.message_id,
    )


async def test_tampered_body_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await refused_by_connector(
        scene,
        _edited(built.data, body_flip),
        reason=Reason.SIGNATURE_INVALID,
        code=Code.UNAUTHENTICATED,
        message="signature does not verify",
        message_id=built.header.message_id,
    )


async def test_tampered_signature_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await refused_by_connector(
        scene,
        _edited(built.data, sig_flip),
        reason=Reason.SIGNATURE_INVALID,
        code=Code.UNAUTHENTICATED,
        message="signature does not verify",
        message_id=built.header.message_id,
    )


async def test_signed_by_another_region_under_the_senders_key_id_is_refused(scene: Scene) -> None:
    """Qingdao's real signing key, naming Shenzhen's key id."""
    forged = SigningKey(_signing_key(scene.stack, SZ).key_id, _signing_key(scene.stack, QD).private)
    built = scene.craft(signer=forged)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.SIGNATURE_INVALID,
        code=Code.UNAUTHENTICATED,
        message="signature does not verify",
        message_id=built.header.message_id,
    )


async def test_signed_by_an_unregistered_key_under_the_senders_key_id_is_refused(scene: Scene) -> None:
    forged = SigningKey(_signing_key(scene.stack, SZ).key_id, SigningKey.generate(SZ).private)
    built = scene.craft(signer=forged)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.SIGNATURE_INVALID,
        code=Code.UNAUTHENTICATED,
        message="signature does not verify",
        message_id=built.header.message_id,
    )


async def test_signed_by_another_regions_key_is_refused(scene: Scene) -> None:
    """Qingdao signs, under its own key id, an envelope that says it comes from Shenzhen."""
    built = scene.craft(signer=_signing_key(scene.stack, QD))
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.KEY_REGION_MISMATCH,
        code=Code.UNAUTHENTICATED,
        message="signing key belongs to another region",
        message_id=built.header.message_id,
    )


async def test_unknown_key_id_is_refused(scene: Scene) -> None:
    built = scene.craft(signer=SigningKey.generate(SZ))
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.UNKNOWN_KEY,
        code=Code.UNAUTHENTICATED,
        message="signing key id is not in the trust registry",
        message_id=built.header.message_id,
    )


async def test_sealing_key_id_as_signer_is_refused(scene: Scene) -> None:
    """A registered key of the sender, but its sealing (KEM) key, named as the signer."""
    sz = load_secrets(Config.load(scene.stack.state.config_path(SZ)))
    built = scene.craft(signer=SigningKey(sz.sealing.key_id, sz.signing.private))
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.KEY_NOT_FOR_SIGNING,
        code=Code.UNAUTHENTICATED,
        message=f"key {sz.sealing.key_id} is not a signing key",
        message_id=built.header.message_id,
    )


async def test_expired_signing_key_is_refused(scene: Scene) -> None:
    """Shenzhen's signing key is past its not_after in the registry Wuxi holds."""
    built = scene.craft()
    with edited_registry(scene.stack, _shenzhen_signing_key_expired, at="connector"):
        await refused_by_connector(
            scene,
            built.data,
            reason=Reason.KEY_EXPIRED,
            code=Code.UNAUTHENTICATED,
            message=f"key {_signing_key(scene.stack, SZ).key_id} is outside its validity period",
            message_id=built.header.message_id,
        )


async def test_not_yet_valid_signing_key_is_refused(scene: Scene) -> None:
    built = scene.craft()
    with edited_registry(scene.stack, _shenzhen_signing_key_not_yet_valid, at="connector"):
        await refused_by_connector(
            scene,
            built.data,
            reason=Reason.KEY_EXPIRED,
            code=Code.UNAUTHENTICATED,
            message=f"key {_signing_key(scene.stack, SZ).key_id} is outside its validity period",
            message_id=built.header.message_id,
        )


async def test_unsupported_suite_is_refused(scene: Scene) -> None:
    built = scene.craft()

    def suite(h: envelope_pb2.Header) -> None:
        h.suite = "rsa1024+none"

    await refused_by_connector(
        scene,
        _resigned(scene.stack, built.data, suite),
        reason=Reason.UNSUPPORTED_SUITE,
        code=Code.UNAUTHENTICATED,
        message="unsupported cryptographic suite",
        message_id=built.header.message_id,
    )


# -- time and replay -----------------------------------------------------------------------------


async def test_replayed_message_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await send_ok(scene.stack, built.data)
    assert [e.event for e in await scene.entries(WX)] == [Event.RECEIVED, Event.PROCESSED]
    await scene.rebase()
    await refused_by_connector(
        scene,
        built.data,
        reason="REPLAYED",
        code=Code.ALREADY_EXISTS,
        message="this message id was already received",
        message_id=built.header.message_id,
    )
    assert scene.stack.nodes[WX].adapters[SERVICE].calls[built.header.message_id] == 1


async def test_replayed_message_after_a_connector_restart_is_refused(scene: Scene) -> None:
    built = scene.craft()
    await send_ok(scene.stack, built.data)
    await _restart_wuxi_connector(scene.stack)
    await scene.rebase()
    await refused_by_connector(
        scene,
        built.data,
        reason="REPLAYED",
        code=Code.ALREADY_EXISTS,
        message="this message id was already received",
        message_id=built.header.message_id,
    )


async def _restart_wuxi_connector(stack: Stack) -> None:
    """Wuxi's connector process stops; a new one (same config, keys, ledger, back ends) starts."""
    node = stack.nodes[WX]
    old = _connector(stack)
    await old.stop()
    node.connector = Connector(old.parts, adapters=node.adapters)
    await node.connector.start()
    nc = await stack.nats(SZ)

    async def reachable() -> bool:
        try:
            await nc.request(subjects.ping_subject(WX), b"", timeout=0.5)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    try:
        await eventually(reachable, what="the new Wuxi connector reachable from Shenzhen")
    finally:
        await nc.close()


async def test_stale_timestamp_is_refused(scene: Scene) -> None:
    window = scene.stack.nodes[WX].cfg.connector.freshness_window_s
    built = scene.craft(created=time.time() - window - 5)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.STALE,
        code=Code.UNAUTHENTICATED,
        message="request is older than the freshness window",
        message_id=built.header.message_id,
    )


async def test_future_timestamp_beyond_clock_skew_is_refused(scene: Scene) -> None:
    created = time.time() + scene.stack.nodes[WX].cfg.connector.clock_skew_s + 5
    built = scene.craft(created=created, deadline=created + 10)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.FROM_THE_FUTURE,
        code=Code.UNAUTHENTICATED,
        message="request is dated beyond the allowed clock skew",
        message_id=built.header.message_id,
    )


async def test_deadline_passed_is_refused(scene: Scene) -> None:
    built = scene.craft(deadline=time.time() - 1)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.EXPIRED,
        code=Code.DEADLINE_EXCEEDED,
        message="request deadline has passed",
        message_id=built.header.message_id,
    )


# -- addressing and sealing ----------------------------------------------------------------------


async def test_wrong_receiving_region_is_refused(scene: Scene) -> None:
    built = scene.craft(to=QD)  # addressed (and sealed) to Qingdao, delivered to Wuxi
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.WRONG_RECIPIENT,
        code=Code.FAILED_PRECONDITION,
        message=f"request is addressed to {QD}, not {WX}",
        message_id=built.header.message_id,
    )


async def test_wrong_subject_is_refused(scene: Scene) -> None:
    """A valid pension request put on another service's subject is not served under that service."""
    built = scene.craft()
    await refused_by_connector(
        scene,
        built.data,
        reason="SUBJECT_MISMATCH",
        code=Code.FAILED_PRECONDITION,
        message="request arrived on a subject that does not match its header",
        message_id=built.header.message_id,
        service=OTHER_SERVICE,
    )


async def test_body_sealed_for_another_region_is_refused(scene: Scene) -> None:
    built = scene.craft(sealed_for=QD)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.SEALED_FOR_ANOTHER_KEY,
        code=Code.UNAUTHENTICATED,
        message="body is sealed for a key this region does not hold",
        message_id=built.header.message_id,
    )


async def test_body_sealed_for_another_region_under_our_key_id_is_refused(scene: Scene) -> None:
    wx_kid, _ = load_registry(Config.load(scene.stack.state.config_path(SZ))).sealing_key_for(WX)
    built = scene.craft(sealed_for=QD, recipient_key_id=wx_kid)
    await refused_by_connector(
        scene,
        built.data,
        reason=Reason.SEAL_INVALID,
        code=Code.UNAUTHENTICATED,
        message="sealed body does not open with our key",
        message_id=built.header.message_id,
    )


async def test_sealed_request_not_matching_its_header_is_refused(scene: Scene) -> None:
    """The header says Wuxi; the request sealed inside targets Qingdao."""
    built = scene.craft()
    request = pension().request
    request.target_region = QD
    await refused_by_connector(
        scene,
        _sealed(scene.stack, built, _request_body(request)),
        reason="HEADER_BODY_MISMATCH",
        code=Code.INVALID_ARGUMENT,
        message="sealed request does not match its header",
        message_id=built.header.message_id,
    )


# -- authorisation -------------------------------------------------------------------------------


async def test_unauthorised_partner_is_refused_by_the_gateway(scene: Scene) -> None:
    with edited_registry(scene.stack, _only_partner_szgov_ywtb, at="gateway"):
        d = await refused_by_gateway(scene, pension(), detail="NOT_AUTHORISED")
    assert (d.code, d.reason) == (Code.PERMISSION_DENIED, "NOT_AUTHORISED")
    assert d.message == f"the registry does not allow dev-partner of {SZ} to call {SERVICE} in {WX}"


async def test_unauthorised_partner_is_refused_by_the_connector(scene: Scene) -> None:
    """An envelope Shenzhen's gateway should never have sent: its partner may not call Wuxi."""
    built = scene.craft()  # from the partner system dev-partner
    with edited_registry(scene.stack, _only_partner_szgov_ywtb, at="connector"):
        await refused_by_connector(
            scene,
            built.data,
            reason="NOT_AUTHORISED",
            code=Code.PERMISSION_DENIED,
            message=f"region {SZ} may not call {SERVICE} here",
            message_id=built.header.message_id,
        )


async def test_unauthorised_service_is_refused_by_the_gateway(scene: Scene) -> None:
    with edited_registry(scene.stack, _only_another_service, at="gateway"):
        d = await refused_by_gateway(scene, pension(), detail="NOT_AUTHORISED")
    assert (d.code, d.reason) == (Code.PERMISSION_DENIED, "NOT_AUTHORISED")
    assert d.message == f"the registry does not allow dev-partner of {SZ} to call {SERVICE} in {WX}"


async def test_unauthorised_service_is_refused_by_the_connector(scene: Scene) -> None:
    built = scene.craft()
    with edited_registry(scene.stack, _only_another_service, at="connector"):
        await refused_by_connector(
            scene,
            built.data,
            reason="NOT_AUTHORISED",
            code=Code.PERMISSION_DENIED,
            message=f"region {SZ} may not call {SERVICE} here",
            message_id=built.header.message_id,
        )


async def test_service_not_provided_is_refused_by_the_gateway(scene: Scene) -> None:
    """The registry says Wuxi does not provide the service: the caller named the wrong provider."""
    with edited_registry(scene.stack, _wuxi_does_not_provide, at="gateway"):
        d = await refused_by_gateway(scene, pension(), detail="INVALID_REQUEST: request.service_code")
    assert (d.code, d.reason) == (Code.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert d.message == "request does not match the catalogue"
    assert d.violations == {"request.service_code": "the target region does not provide this service"}


async def test_service_not_provided_is_refused_by_the_connector(scene: Scene) -> None:
    built = scene.craft()
    with edited_registry(scene.stack, _wuxi_does_not_provide, at="connector"):
        await refused_by_connector(
            scene,
            built.data,
            reason="NOT_AUTHORISED",
            code=Code.PERMISSION_DENIED,
            message=f"region {SZ} may not call {SERVICE} here",
            message_id=built.header.message_id,
        )


# -- size and shape ------------------------------------------------------------------------------


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


async def test_garbage_bytes_are_refused(scene: Scene) -> None:
    data = b"\x0a\xff\xff\xff\x0fnot a protobuf"
    await refused_by_connector(
        scene,
        data,
        reason=Reason.ENVELOPE_MALFORMED,
        code=Code.INVALID_ARGUMENT,
        message="envelope does not decode",
        message_id=_digest_id(data),
    )


async def test_empty_message_is_refused(scene: Scene) -> None:
    await refused_by_connector(
        scene,
        b"",
        reason=Reason.ENVELOPE_MALFORMED,
        code=Code.INVALID_ARGUMENT,
        message="header lacks message id, sender or kind",
        message_id=_digest_id(b""),
    )


async def test_header_that_does_not_decode_is_refused(scene: Scene) -> None:
    data = _edited(scene.craft().data, lambda env: setattr(env, "header", b"\x0a\xff\xff\xff\x0f"))
    await refused_by_connector(
        scene,
        data,
        reason=Reason.ENVELOPE_MALFORMED,
        code=Code.INVALID_ARGUMENT,
        message="envelope does not decode",
        message_id=_digest_id(data),
    )


async def test_envelope_that_is_not_a_request_is_refused(scene: Scene) -> None:
    """Correctly signed by Shenzhen, but a response, put on the request subject."""
    built = scene.craft()

    def response(h: envelope_pb2.Header) -> None:
        h.kind = envelope_pb2.MESSAGE_KIND_RESPONSE

    await refused_by_connector(
        scene,
        _resigned(scene.stack, built.data, response),
        reason=Reason.ENVELOPE_MALFORMED,
        code=Code.INVALID_ARGUMENT,
        message="not a request",
        message_id=built.header.message_id,
    )


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


async def test_sealed_body_that_does_not_decode_is_refused(scene: Scene) -> None:
    """Signed and sealed correctly, but what is sealed is not a RequestBody."""
    built = scene.craft()
    await refused_by_connector(
        scene,
        _sealed(scene.stack, built, b"\x0a\xff\xff\xff\x0fnot a protobuf"),
        reason=Reason.ENVELOPE_MALFORMED,
        code=Code.INVALID_ARGUMENT,
        message="sealed body does not decode",
        message_id=built.header.message_id,
    )


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
