"""A signed, sealed query crosses from Shenzhen to Wuxi and back, for every catalogue item."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from ledger import Event
from ledger.verify import verify_sqlite_file
from tests.conftest import SZ, WX, Stack
from tests.e2e.requests import build, cases, pension
from tongban.core import envelope


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["service_code"])
async def test_every_catalogue_item_answers(stack: Stack, case: dict[str, Any]) -> None:
    resp = await stack.stub(SZ).Query(build(case), timeout=10)
    data = json_format.MessageToDict(resp.data)
    for key, value in case["expect"].items():
        assert data[key] == value, key
    assert resp.responder_region == WX
    assert resp.responder_key_id.startswith(f"{WX}.sig.")
    assert stack.nodes[WX].adapters[case["service_code"]].calls[resp.message_id] == 1

    # Each side's ledger holds its half, and the halves name each other's envelope digests.
    sz = await stack.nodes[SZ].ledger.by_message_id(resp.message_id)
    wx = await stack.nodes[WX].ledger.by_message_id(resp.message_id)
    assert [e.event for e in sz] == [Event.SUBMITTED, Event.RESPONDED]
    assert [e.event for e in wx] == [Event.RECEIVED, Event.PROCESSED]
    assert sz[0].envelope_digest == wx[0].envelope_digest == resp.request_digest
    assert sz[1].envelope_digest == wx[1].envelope_digest == resp.response_digest
    assert {e.peer_region for e in sz} == {WX} and {e.peer_region for e in wx} == {SZ}
    assert sz[0].trace_id == wx[0].trace_id == resp.trace_id != ""


async def test_only_declared_fields_come_back(stack: Stack) -> None:
    req = pension()
    req.request.governance.declared_fields.append("total_months")
    resp = await stack.stub(SZ).Query(req, timeout=10)
    assert set(json_format.MessageToDict(resp.data)) == {"total_months"}


async def test_reverse_direction_and_ledgers_verify(stack: Stack) -> None:
    req = pension()
    req.request.target_region = SZ
    resp = await stack.stub(WX).Query(req, timeout=10)
    assert resp.responder_region == SZ
    for node in stack.nodes.values():
        report = verify_sqlite_file(node.cfg.path(node.cfg.ledger.path))
        assert report.ok and report.count >= 2


async def test_personal_data_not_in_the_wire_envelope(stack: Stack) -> None:
    """A relay on the hub sees the envelope: no ID number in clear in subject, headers or bytes."""
    seen: list[tuple[str, bytes, dict[str, str]]] = []
    spy = await stack.nats(WX)

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data, dict(msg.headers or {})))

    await spy.subscribe("tb.v1.>", cb=record)
    await spy.flush()
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    await spy.flush()
    await spy.close()
    assert resp.message_id
    assert seen, "the spy saw the request"
    for subject, data, headers in seen:
        for secret in ("320213198511200025", "3202131985"):
            assert secret not in subject
            assert secret.encode() not in data
            assert all(secret not in v for v in headers.values())
        if subject.startswith("tb.v1.rpc."):
            _, header = envelope.parse(data)
            assert header.subject_masked == "3202**********0025"
