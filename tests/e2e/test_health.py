"""gRPC health of a gateway: it follows the NATS connection and maintenance mode (issue 6, health)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import SZ, Stack
from tests.e2e.cli import tongban
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.helpers import eventually

SERVICES = ("", "tongban.v1.Exchange")


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
