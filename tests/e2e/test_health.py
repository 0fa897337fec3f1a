"""gRPC health of a gateway, per service: Exchange (and "") is SERVING only when NATS, the ledger and
the registry are ready and the gateway is not in maintenance; Ledger needs only the ledger;
``tongban.liveness`` says the process serves at all (issue 6, health)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import SZ, Stack
from tests.e2e.cli import tongban
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.helpers import eventually
from tests.security.test_registry_live import _shenzhen_signing_key, root_key
from tongban import trust

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
    revoked = trust.edit_signed(
        node.gateway.registry.signed,
        root_key(stack),
        lambda doc: setattr(_shenzhen_signing_key(doc), "revoked", True),
    )
    nc = await stack.nats(SZ)
    try:
        await trust.publish(nc, SZ, revoked)
    finally:
        await nc.close()

    async def unready() -> bool:
        return (await per_service(stack))["tongban.v1.Exchange"] == NOT_SERVING

    await eventually(unready, what="NOT_SERVING with a revoked signing key")
    assert node.gateway.readiness()["registry"] is False
    assert (await per_service(stack))["tongban.v1.Ledger"] == SERVING
