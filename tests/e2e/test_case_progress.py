"""A case that lives for days: accepted now, 补正 requested and received later, then 办结."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from connectors.adapters import AdapterRequest, StatusUpdate
from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.e2e.cli import tongban
from tests.helpers import eventually
from tongban.core.errors import NotFound, TongbanError
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.status_codes import status_of
from tongban.v1 import exchange_pb2


class AcceptingBackend:
    """Takes the case and accepts it; the decision comes later."""

    async def call(self, request: AdapterRequest) -> dict[str, object]:
        return {}

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        return [StatusUpdate(1, "SJ", "wx-ywtb", "已接件"), StatusUpdate(3, "SL", "wx-ywtb", "已受理")]


@pytest.fixture
async def slow_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(
        topology,
        state,
        adapters={WX: {CASE_SERVICE: AcceptingBackend()}},
        config={"backend_api": {"listen": "127.0.0.1:0"}},
    )
    try:
        yield s
    finally:
        await stop_stack(s)


async def test_later_statuses_reach_the_watcher_in_order(slow_stack: Stack) -> None:
    stub = slow_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    seen: list[exchange_pb2.CaseEvent] = []

    async def follow() -> None:
        call = stub.WatchCase(exchange_pb2.WatchCaseRequest(case_no=receipt.case_no), timeout=30)
        async for item in call:
            seen.append(item.event)

    watching = asyncio.create_task(follow())
    await eventually(lambda: len(seen) == 2, what="received and accepted")
    assert not watching.done()  # accepted is not the end: the watch goes on

    worker = slow_stack.nodes[WX].connector.cases  # type: ignore[union-attr]
    assert worker is not None
    await worker.report_status(receipt.case_no, [StatusUpdate(6, "BZ", "wx-ywtb", "请补充劳动合同")])
    await eventually(lambda: len(seen) == 3, what="supplement requested")
    # The operator's tool reports the rest through the connector's back-end API.
    api = slow_stack.nodes[WX].connector.backend_api  # type: ignore[union-attr]
    assert api is not None
    for status, code in ((7, "BZJS"), (11, "BJ")):
        rc, out, err = await tongban(
            "case",
            "report",
            receipt.case_no,
            "--api",
            f"127.0.0.1:{api.port}",
            "--status",
            str(status),
            "--local-code",
            code,
        )
        assert rc == 0 and f"status {status} sent as event" in out, err
    await asyncio.wait_for(watching, 30)  # ends at 11 办结（通过）
    assert [e.sequence for e in seen] == [1, 2, 3, 4, 5]
    assert [e.status for e in seen] == [1, 3, 6, 7, 11]
    assert seen[2].note == "请补充劳动合同" and seen[4].local_code == "BJ"

    case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
    assert case.status == exchange_pb2.CASE_STATUS_APPROVED and list(case.events) == seen
    for node in (slow_stack.nodes[SZ], slow_stack.nodes[WX]):
        entries = await node.ledger.by_message_id(receipt.message_id)
        assert [e.event for e in entries].count(Event.STATUS) == 5

    # Closed: nothing follows a terminal status; unknown cases are refused.
    with pytest.raises(TongbanError) as closed:
        await worker.report_status(receipt.case_no, [StatusUpdate(8)])
    assert (
        closed.value.reason == "CASE_CLOSED"
        and status_of(closed.value.reason) == grpc.StatusCode.FAILED_PRECONDITION
    )
    with pytest.raises(NotFound):
        await worker.report_status(f"{SZ}-20260101-0000000000", [StatusUpdate(6)])
    config = str(slow_stack.state.config_path(WX))
    rc, _, err = await tongban("case", "report", receipt.case_no, "--config", config, "--status", "16")
    assert rc == 2 and "BLZT" in err
