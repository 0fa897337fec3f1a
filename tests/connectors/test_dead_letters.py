"""Retries with the service's back-off, then the dead-letter stream; replay once the back end is fixed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from connectors.adapters import AdapterFailure, AdapterRequest
from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.cli import tongban
from tests.helpers import note
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.v1 import envelope_pb2, exchange_pb2

ATTEMPTS = 3


class SwitchableBackend:
    """A back end that fails (AdapterFailure) until it is fixed."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        self.calls += 1
        if self.broken:
            raise AdapterFailure("pension system is down")
        return {"transferable": True}


def quick_retry_catalogue() -> Catalogue:
    """The embedded catalogue with the pension-transfer item retried fast, 3 attempts."""
    proto = Catalogue.load().to_proto()
    for item in proto.items:
        if item.code == CASE_SERVICE:
            del item.delivery.backoff[:]
            item.delivery.backoff.add().FromMilliseconds(100)
            item.delivery.max_attempts = ATTEMPTS
    return Catalogue.from_proto(proto)


@pytest.fixture
async def flaky_stack(topology: Topology, state: DevState) -> AsyncIterator[tuple[Stack, SwitchableBackend]]:
    backend = SwitchableBackend()
    s = await start_stack(
        topology, state, adapters={WX: {CASE_SERVICE: backend}}, catalogue=quick_retry_catalogue()
    )
    try:
        yield s, backend
    finally:
        await stop_stack(s)


async def test_failing_back_end_dead_letters_then_replay_delivers_once(
    flaky_stack: tuple[Stack, SwitchableBackend],
) -> None:
    stack, backend = flaky_stack
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)

    # The watch ends when the handling region reports the dead letter.
    events = await watch(stub, receipt.case_no)
    assert [e.delivery_state for e in events] == [exchange_pb2.DELIVERY_STATE_DEAD_LETTERED]
    assert events[-1].problem.reason == "BACKEND_FAILURE"
    assert backend.calls == ATTEMPTS

    wx = stack.nodes[WX]
    entries = await wx.ledger.by_message_id(receipt.message_id)
    assert [e.event for e in entries].count(Event.RECEIVED) == ATTEMPTS
    assert [e.event for e in entries].count(Event.DEAD_LETTERED) == 1
    dead_entry = next(e for e in entries if e.event == Event.DEAD_LETTERED)
    assert "BACKEND_FAILURE" in note(dead_entry)
    sz = await stack.nodes[SZ].ledger.by_message_id(receipt.message_id)
    assert Event.DEAD_LETTERED in [e.event for e in sz]
    # Wuxi's signed receipt names the RECEIVED entry of the last attempt: the request is on record
    # there even though the back end never took it.
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None and gateway.cases is not None
    signed = await gateway.cases.receipt(receipt.message_id)
    assert signed is not None
    held = envelope_pb2.Receipt.FromString(envelope_pb2.SignedReceipt.FromString(signed).receipt)
    received = [e for e in entries if e.event == Event.RECEIVED]
    assert held.leaf_index == received[-1].index and held.envelope_digest == received[-1].envelope_digest

    config = str(stack.state.config_path(WX))
    rc, out, err = await tongban("dlq", "list", "--config", config, "--json")
    assert rc == 0, err
    letters = json.loads(out)
    assert [(d["message_id"], d["reason"], d["attempts"]) for d in letters] == [
        (receipt.message_id, "BACKEND_FAILURE", ATTEMPTS)
    ]

    backend.broken = False
    rc, out, err = await tongban("dlq", "replay", str(letters[0]["seq"]), "--config", config)
    assert rc == 0, err
    assert receipt.message_id in out

    events = await watch(stub, receipt.case_no, after=1)
    assert [e.status for e in events] == [
        exchange_pb2.CASE_STATUS_RECEIVED,
        exchange_pb2.CASE_STATUS_ACCEPTED,
        exchange_pb2.CASE_STATUS_APPROVED,
    ]
    assert [e.sequence for e in events] == [2, 3, 4]
    assert backend.calls == ATTEMPTS + 1  # one successful call after the replay

    entries = await wx.ledger.by_message_id(receipt.message_id)
    assert [e.event for e in entries].count(Event.PROCESSED) == 1
    assert [e.event for e in entries].count(Event.RESENT) == 1  # the operator's replay is on record
    rc, out, err = await tongban("dlq", "list", "--config", config, "--json")
    assert rc == 0 and json.loads(out) == []

    rc, out, err = await tongban("dlq", "replay", "999", "--config", config)
    assert rc == 2 and "no dead letter 999" in err


async def test_poison_is_dead_lettered_at_once(stack: Stack) -> None:
    nc = await stack.nats(SZ)
    try:
        js = nc.jetstream()
        # Garbage straight into Wuxi's inbound stream (as if a region's gateway were compromised).
        await js.publish(
            "tb.v1.req.320200.YLBXZYJX0001", b"\x00not an envelope", headers={"Nats-Msg-Id": "p1"}
        )
    finally:
        await nc.close()
    wx = stack.nodes[WX]

    async def dead() -> bool:
        return any(
            e.event == Event.REJECTED and note(e).startswith("POISON") for e in await wx.ledger.entries()
        )

    from tests.helpers import eventually

    await eventually(dead, what="poison recorded")
    rc, out, err = await tongban("dlq", "list", "--config", str(stack.state.config_path(WX)), "--json")
    assert rc == 0, err
    letters = json.loads(out)
    assert rc == 0 and len(letters) == 1 and letters[0]["attempts"] == 1
    assert letters[0]["reason"] == "ENVELOPE_MALFORMED"
    assert wx.backend_calls() == 0
