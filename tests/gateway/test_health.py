"""gRPC health of a gateway, per service: Exchange (and "") is SERVING only when NATS, the ledger and
the registry are ready and the gateway is not in maintenance; Ledger needs only the ledger;
``tongban.liveness`` says the process serves at all (issue 6, health); ``tongban.cross_region`` also
needs a peer region to answer through the hub (issue 12, finding 9)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import CROSS_REGION
from tests.conftest import QD, SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cases import submit_request
from tests.e2e.cli import tongban
from tests.e2e.grpc_errors import details_of
from tests.e2e.metered import METRICS_CONFIG, Metered, readyz
from tests.e2e.requests import pension
from tests.helpers import eventually, signing_key_of
from tests.security.test_registry_live import root_key
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime import live_registry

SERVICES = ("", "tongban.v1.Exchange")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def per_service(stack: Stack) -> dict[str, int]:
    async with grpc.aio.insecure_channel(stack.nodes[SZ].address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return {
            s: (await stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=5)).status
            for s in (*SERVICES, "tongban.v1.Ledger", "tongban.liveness")
        }


async def statuses(stack: Stack) -> set[int]:
    async with grpc.aio.insecure_channel(stack.nodes[SZ].address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return {
            (await stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=5)).status for s in SERVICES
        }


async def test_health_goes_not_serving_without_nats_and_back(stack: Stack) -> None:
    assert await statuses(stack) == {health_pb2.HealthCheckResponse.SERVING}
    leaf = stack.topology.leaves[SZ]
    await leaf.stop()

    async def not_serving() -> bool:
        return await statuses(stack) == {health_pb2.HealthCheckResponse.NOT_SERVING}

    await eventually(not_serving, what="NOT_SERVING while Shenzhen's NATS is down")
    # Auditors still read the ledger, and the process is alive: restarting it would not help.
    assert await per_service(stack) == {
        "": NOT_SERVING,
        "tongban.v1.Exchange": NOT_SERVING,
        "tongban.v1.Ledger": SERVING,
        "tongban.liveness": SERVING,
    }
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None and gateway.readiness()["nats"] is False
    await leaf.start()  # same ports: the gateway's client reconnects on its own

    async def serving() -> bool:
        return await statuses(stack) == {health_pb2.HealthCheckResponse.SERVING}

    await eventually(serving, timeout=20, what="SERVING again once NATS is back")


async def test_maintenance_mode_drains(stack: Stack) -> None:
    """`tongban maintenance on`: NOT_SERVING and new calls refused (UNAVAILABLE MAINTENANCE with
    RetryInfo), so a load balancer drains the gateway (the check is made when a call starts: calls
    already running are not touched); `off`: SERVING again."""
    cfg = str(stack.state.config_path(SZ))
    stub = stack.stub(SZ)
    rc, out, err = await tongban("maintenance", "on", "--config", cfg)
    assert rc == 0 and "maintenance ON" in out, err

    async def not_serving() -> bool:
        return await statuses(stack) == {health_pb2.HealthCheckResponse.NOT_SERVING}

    await eventually(not_serving, what="NOT_SERVING in maintenance")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Query(pension(), timeout=5)
    d = details_of(refused.value)
    assert (d.code, d.reason, d.retry) == (grpc.StatusCode.UNAVAILABLE, "MAINTENANCE", True)
    assert await stack.nodes[SZ].ledger.size() == 0  # refused before anything was recorded

    rc, out, _ = await tongban("maintenance", "off", "--config", cfg)
    assert rc == 0 and "maintenance off" in out

    async def serving() -> bool:
        return await statuses(stack) == {health_pb2.HealthCheckResponse.SERVING}

    await eventually(serving, what="SERVING after maintenance")
    assert (await stub.Query(pension(), timeout=10)).responder_region == "320200"


async def test_exchange_is_not_serving_when_the_ledger_fails(stack: Stack) -> None:
    """Nothing may be exchanged unrecorded: with its ledger gone, Exchange and Ledger are NOT_SERVING."""
    node = stack.nodes[SZ]
    assert node.gateway is not None and all(node.gateway.readiness().values())
    await node.ledger.close()  # what a lost database or a failed disk looks like from here

    async def ledger_down() -> bool:
        return (await per_service(stack)) == {
            "": NOT_SERVING,
            "tongban.v1.Exchange": NOT_SERVING,
            "tongban.v1.Ledger": NOT_SERVING,
            "tongban.liveness": SERVING,
        }

    await eventually(ledger_down, what="NOT_SERVING without a ledger")
    assert node.gateway.readiness() == {
        "started": True,
        "nats": True,
        "ledger": False,
        "registry": True,
        "not_in_maintenance": True,
    }


async def test_exchange_is_not_serving_once_its_own_signing_key_is_revoked(stack: Stack) -> None:
    """A registry that revokes the key the gateway signs with (and offers no other) makes it unready:
    every peer would refuse what it sends."""
    node = stack.nodes[SZ]
    assert node.gateway is not None
    revoked = live_registry.edit_signed(
        node.gateway.registry.signed,
        root_key(stack),
        lambda doc: setattr(signing_key_of(doc, SZ), "revoked", True),
    )
    nc = await stack.nats(SZ)
    try:
        await live_registry.publish(nc, SZ, revoked)
    finally:
        await nc.close()

    async def unready() -> bool:
        return (await per_service(stack))["tongban.v1.Exchange"] == NOT_SERVING

    await eventually(unready, what="NOT_SERVING with a revoked signing key")
    assert node.gateway.readiness()["registry"] is False
    assert (await per_service(stack))["tongban.v1.Ledger"] == SERVING


@pytest.fixture
async def probed(topology: Topology, state: DevState) -> AsyncIterator[Metered]:
    """A metered stack whose gateways ping their peer regions every 0.2 s."""
    stack = await start_stack(
        topology,
        state,
        config={"metrics": METRICS_CONFIG, "gateway": {"peer_probe_interval_s": 0.2}},
        metered=True,
    )
    try:
        yield Metered(stack)
    finally:
        await stop_stack(stack)


async def test_hub_down_takes_cross_region_out_but_not_submit(probed: Metered) -> None:
    """Finding 9: with the hub killed, ``tongban.cross_region`` goes NOT_SERVING and the peer gauge
    says 0, while Exchange and "" stay SERVING, ``/readyz`` stays 200 (showing cross_region false)
    and a Submit is accepted (store and forward); the hub back, cross_region SERVING again."""
    stack = probed.stack

    async def health(service: str) -> int:
        async with grpc.aio.insecure_channel(stack.nodes[SZ].address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

    async def reachable(peer: str) -> float:
        return (await probed.scrape(SZ, "gateway")).total("tongban_peer_reachable", peer_region=peer)

    async def cross_region(status: int) -> bool:
        return await health(CROSS_REGION) == status

    await eventually(functools.partial(cross_region, SERVING), what="cross-region SERVING with the hub up")
    assert await reachable(WX) == 1 and await reachable(QD) == 0  # QD is registered, serves nothing

    await stack.topology.hub.kill()
    await eventually(functools.partial(cross_region, NOT_SERVING), what="cross-region NOT_SERVING")
    assert await reachable(WX) == 0
    assert {s: await health(s) for s in SERVICES} == dict.fromkeys(SERVICES, SERVING)
    status, body = await probed.get(SZ, "gateway", "/readyz")
    checks = readyz(body)
    assert status == 200 and checks["not_required"] == {"cross_region": False}, body
    receipt = await stack.stub(SZ).Submit(submit_request(key="hub-down"), timeout=10)
    assert receipt.case_no and not receipt.replayed
    print(f"hub down: cross_region NOT_SERVING, Exchange SERVING, Submit accepted ({receipt.case_no})")

    await stack.topology.hub.start()
    await stack.topology.hub.wait_leafnodes(len(stack.topology.leaves))
    await eventually(
        functools.partial(cross_region, SERVING), timeout=30, what="cross-region SERVING with the hub back"
    )
    assert await reachable(WX) == 1
    _, body = await probed.get(SZ, "gateway", "/readyz")
    assert readyz(body)["not_required"] == {"cross_region": True}
