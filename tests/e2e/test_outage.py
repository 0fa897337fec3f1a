"""Store and forward: a handling region whose nats-server is down gets its work when it returns."""

from __future__ import annotations

import asyncio
from collections import Counter

from connectors.demo.cases import case_effects
from ledger import Event
from tests.conftest import SZ, WX, Stack
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.helpers import eventually
from tongban.v1 import exchange_pb2

N = 100


async def test_receiver_down_then_back_every_case_processed_once(stack: Stack) -> None:
    leaf = stack.topology.leaves[WX]
    await leaf.stop()
    stub = stack.stub(SZ)
    receipts = await asyncio.gather(
        *(stub.Submit(submit_request(key=f"outage-{i:03d}"), timeout=10) for i in range(N))
    )
    assert len({r.case_no for r in receipts}) == N and not any(r.replayed for r in receipts)

    # All accepted while Wuxi is unreachable: nothing has been forwarded yet.
    first = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipts[0].case_no), timeout=5)).case
    assert first.delivery_state == exchange_pb2.DELIVERY_STATE_ACCEPTED

    await leaf.start()  # same ports, same JetStream store
    await stack.topology.hub.wait_leafnodes(len(stack.topology.leaves))

    async def all_approved() -> bool:
        for r in receipts:
            case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=r.case_no), timeout=5)).case
            if case.status != exchange_pb2.CASE_STATUS_APPROVED:
                return False
        return True

    await eventually(all_approved, timeout=90, what=f"{N} cases approved after the outage")

    ids = {r.message_id for r in receipts}
    calls = stack.nodes[WX].adapters[CASE_SERVICE].calls
    assert {m: calls[m] for m in ids} == dict.fromkeys(ids, 1)
    effects = case_effects(stack.nodes[WX].cfg.path(stack.nodes[WX].cfg.connector.demo_db))
    assert {m: effects[m] for m in ids} == dict.fromkeys(ids, 1)
    wx = Counter(e.message_id for e in await stack.nodes[WX].ledger.entries() if e.event == Event.PROCESSED)
    assert {m: wx[m] for m in ids} == dict.fromkeys(ids, 1)
    sz = Counter(e.message_id for e in await stack.nodes[SZ].ledger.entries() if e.event == Event.STATUS)
    assert {m: sz[m] for m in ids} == dict.fromkeys(ids, 3)
