"""One region cannot take every slot of another region's connector (``max_in_flight_per_region``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest

from connectors.adapters import AdapterRequest
from ledger import Event
from tests.conftest import QD, SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.helpers import eventually, note
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology

SERVICE = "SBJFJLCX0001"


class HeldBackend:
    """A back end that holds every call until it is released (a slow system under a flood)."""

    def __init__(self) -> None:
        self.waiting = 0
        self.release = asyncio.Event()

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        self.waiting += 1
        await self.release.wait()
        return {"records": []}


@pytest.fixture
async def held(topology: Topology, state: DevState) -> AsyncIterator[tuple[Stack, HeldBackend]]:
    backend = HeldBackend()
    s = await start_stack(
        topology,
        state,
        serving=(SZ, WX, QD),
        adapters={WX: {SERVICE: backend}},
        config={"connector": {"max_in_flight_per_region": 2}},
    )
    try:
        yield s, backend
    finally:
        backend.release.set()
        await stop_stack(s)


async def test_a_region_over_its_share_is_refused_while_another_is_served(
    held: tuple[Stack, HeldBackend],
) -> None:
    stack, backend = held
    sz, qd = stack.stub(SZ), stack.stub(QD)
    first = [asyncio.ensure_future(sz.Query(pension(), timeout=20)) for _ in range(2)]
    await eventually(lambda: backend.waiting == 2, what="Shenzhen's two requests at the back end")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sz.Query(pension(), timeout=10)
    d = details_of(refused.value)
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PEER_BUSY")

    other = asyncio.ensure_future(qd.Query(pension(), timeout=20))
    await eventually(lambda: backend.waiting == 3, what="Qingdao's request reached the back end all the same")
    backend.release.set()
    answers = await asyncio.gather(*first, other)
    assert all(a.responder_region == WX for a in answers)

    wx = await stack.nodes[WX].ledger.entries()
    busy = [e for e in wx if e.event == Event.REJECTED and note(e) == "PEER_BUSY"]
    assert [e.peer_region for e in busy] == [SZ]
    # The refused request never reached the back end: no RECEIVED under its id.
    assert not [e for e in wx if e.message_id == busy[0].message_id and e.event == Event.RECEIVED]
