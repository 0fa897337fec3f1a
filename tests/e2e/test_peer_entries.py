"""Reading another region's entries over NATS (``{"entries": ...}`` on ``tb.v1.lproof.<region>``):
what `tongban trace` reads through the operator's own gateway.

Wuxi's ledger holds entries of one trace about Shenzhen's traffic and about Qingdao's. Each region,
asking with its own credentials on the hub, gets only the entries about its own traffic; the answer
goes only into a registered region's inbox and holds only that region's entries, whoever asked;
malformed requests get an error answer; and the asker checks every entry it gets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from gateway.checkpoints import CheckpointPublisher
from gateway.ledger_wire import MAX_ENTRY_REPLY_BYTES, entry_doc
from gateway.peer_ledger import PeerReadError, fetch_entries
from ledger import EntryDraft, Event
from tests.conftest import QD, SZ, WX, Stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.gateway.test_witness import Region, reachable, region
from tests.helpers import eventually
from tongban.core import subjects
from tongban.core.message_ids import new_message_id
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.v1 import ledger_pb2, ledger_pb2_grpc

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def draft(message_id: str, peer: str, event: Event, *, trace_id: str = TRACE, detail: str = "") -> EntryDraft:
    return EntryDraft(
        event=event,
        message_id=message_id,
        peer_region=peer,
        service_code="SBJFJLCX0001",
        envelope_digest=hashlib.sha256(message_id.encode()).digest(),
        trace_id=trace_id,
        detail=detail,
    )


@pytest.fixture
async def regions(topology: Topology, state: DevState, tmp_path: Path) -> AsyncIterator[dict[str, Region]]:
    async with (
        region(topology, state, SZ) as sz,
        region(topology, state, WX) as wx,
        region(topology, state, QD) as qd,
    ):
        yield {SZ: sz, WX: wx, QD: qd}


@pytest.fixture
async def wuxi(regions: dict[str, Region], tmp_path: Path) -> AsyncIterator[CheckpointPublisher]:
    wx = regions[WX]
    publisher = CheckpointPublisher(
        WX, wx.nc, wx.ledger, wx.registry, wx.secrets, state_path=tmp_path / "wx.json", interval_s=3600
    )
    await publisher.start()
    try:
        for r in (SZ, QD):
            await reachable(regions[r].nc, subjects.ledger_proof_subject(WX), b"{}")
        yield publisher
    finally:
        await publisher.stop()


async def test_each_region_reads_only_entries_about_its_own_traffic(
    regions: dict[str, Region], wuxi: CheckpointPublisher
) -> None:
    sz_msg, qd_msg = new_message_id(), new_message_id()
    await regions[WX].ledger.append(
        draft(sz_msg, SZ, Event.RECEIVED),
        draft(qd_msg, QD, Event.RECEIVED),  # the same trace id, Qingdao's traffic
        draft(sz_msg, SZ, Event.PROCESSED, detail="OK"),
        draft(qd_msg, QD, Event.PROCESSED, detail="OK"),
        draft(sz_msg, SZ, Event.STATUS, trace_id=OTHER_TRACE, detail="seq=1 event=ACCEPTED"),
    )
    sz, qd = regions[SZ].nc, regions[QD].nc

    got = await fetch_entries(sz, WX, message_id=sz_msg, timeout_s=5)
    assert [(e.index, e.event, e.peer_region) for e in got] == [
        (0, Event.RECEIVED, SZ),
        (2, Event.PROCESSED, SZ),
        (4, Event.STATUS, SZ),
    ]
    assert got == await regions[WX].ledger.by_message_id(sz_msg)  # every field, hashes included
    by_trace = await fetch_entries(sz, WX, trace_id=TRACE, timeout_s=5)
    assert [(e.index, e.message_id) for e in by_trace] == [(0, sz_msg), (2, sz_msg)]  # not Qingdao's
    assert await fetch_entries(sz, WX, message_id=qd_msg, timeout_s=5) == []  # Qingdao's message
    assert [e.index for e in await fetch_entries(qd, WX, trace_id=TRACE, timeout_s=5)] == [1, 3]
    assert await fetch_entries(qd, WX, message_id=sz_msg, timeout_s=5) == []

    # Whoever sends the request, the answer goes to the inbox it names, about that inbox's region
    # only: Shenzhen naming Qingdao's inbox gets nothing and learns nothing.
    landed: list[dict[str, Any]] = []

    async def sink(msg: Msg) -> None:
        landed.append(json.loads(msg.data))

    await qd.subscribe(f"{subjects.inbox_prefix(QD)}.stolen", cb=sink)
    await qd.flush()
    await reachable(sz, subjects.ledger_proof_subject(WX), b"{}")
    request = json.dumps({"entries": {"trace_id": TRACE}}).encode()
    await sz.publish(subjects.ledger_proof_subject(WX), request, reply=f"{subjects.inbox_prefix(QD)}.stolen")
    await eventually(lambda: len(landed) == 1, what="the answer in Qingdao's inbox")
    assert [e["peer_region"] for e in landed[0]["entries"]] == [QD, QD]


async def test_malformed_requests_and_foreign_reply_subjects(
    regions: dict[str, Region], wuxi: CheckpointPublisher
) -> None:
    sz = regions[SZ].nc
    message_id = new_message_id()
    malformed: list[object] = [
        {"entries": {"message_id": "not-a-ulid"}},
        {"entries": {"message_id": message_id.lower()}},
        {"entries": {"message_id": message_id + "\n"}},
        {"entries": {"trace_id": TRACE.upper()}},
        {"entries": {"trace_id": "0" * 32}},
        {"entries": {"message_id": message_id, "trace_id": TRACE}},
        {"entries": {}},
        {"entries": [message_id]},
        {"entries": {"message_id": message_id}, "limit": 5},
        {"entries": {"case_no": f"{SZ}-20260101-AAAAAAAAAA"}},
    ]
    for bad in malformed:
        answer = await sz.request(subjects.ledger_proof_subject(WX), json.dumps(bad).encode(), timeout=5)
        assert set(json.loads(answer.data)) == {"error"}, bad
    for raw in (b"not json", b"[1]", b'{"entries": {"message_id": "' + b"A" * 300 + b'"}}'):
        answer = await sz.request(subjects.ledger_proof_subject(WX), raw, timeout=5)
        assert set(json.loads(answer.data)) == {"error"}, raw

    # No answer into anything but a registered region's inbox.
    request = json.dumps({"entries": {"message_id": message_id}}).encode()
    with capture_logs() as logs:
        for reply in ("_INBOX_999999.x", subjects.request_subject(QD, "SBJFJLCX0001"), ""):
            await sz.publish(subjects.ledger_proof_subject(WX), request, reply=reply)
        await sz.flush()
        # A good request after them on the same connection: once it is answered, the three before
        # it have been handled (and dropped).
        assert await fetch_entries(sz, WX, message_id=message_id, timeout_s=5) == []
    dropped = [e for e in logs if e["event"] == "witness.proof_request_dropped"]
    assert len(dropped) == 3


async def test_answers_are_capped(regions: dict[str, Region], wuxi: CheckpointPublisher) -> None:
    message_id = new_message_id()
    await regions[WX].ledger.append(
        *(draft(message_id, SZ, Event.RECEIVED, detail=f"attempt={n} " + "x" * 400) for n in range(210))
    )
    with capture_logs() as logs:
        got = await fetch_entries(regions[SZ].nc, WX, message_id=message_id, timeout_s=5)
    assert 0 < len(got) < 210
    assert [e.index for e in got] == list(range(len(got)))  # the first ones, in order
    assert any(e["event"] == "witness.entries_truncated" for e in logs)
    answer = await regions[SZ].nc.request(
        subjects.ledger_proof_subject(WX),
        json.dumps({"entries": {"message_id": message_id}}).encode(),
        timeout=5,
    )
    assert len(answer.data) <= MAX_ENTRY_REPLY_BYTES
    assert json.loads(answer.data)["truncated"] is True


async def test_the_asker_checks_every_entry(regions: dict[str, Region], tmp_path: Path) -> None:
    """A responder answering for Wuxi (here: a stand-in on Wuxi's connection) that alters an entry,
    names another region or refuses is found out; no responder at all is unreachable."""
    wx, sz = regions[WX], regions[SZ].nc
    message_id = new_message_id()
    [received, other] = await wx.ledger.append(
        draft(message_id, SZ, Event.RECEIVED), draft(new_message_id(), SZ, Event.RECEIVED)
    )
    with pytest.raises(PeerReadError) as err:
        await fetch_entries(sz, WX, message_id=message_id, timeout_s=1)
    assert err.value.reason == "PEER_UNREACHABLE"

    good = entry_doc(received)
    answers = {
        "tampered": {"entries": [good | {"detail": "edited"}], "truncated": False},
        "wrong region": {"entries": [good | {"region": QD}], "truncated": False},
        "not ours": {"entries": [good | {"peer_region": QD}], "truncated": False},
        "other message": {"entries": [entry_doc(other)], "truncated": False},
        "extra field": {"entries": [good | {"x": 1}], "truncated": False},
        "bad hash": {"entries": [good | {"entry_hash": "AAAA"}], "truncated": False},
        "twice": {"entries": [good, good], "truncated": False},
        "not an answer": {"proof": []},
        "refused": {"error": "no"},
    }
    current: list[bytes] = []

    async def stand_in(msg: Msg) -> None:
        await msg.respond(current[0])

    sub = await wx.nc.subscribe(subjects.ledger_proof_subject(WX), cb=stand_in)
    await wx.nc.flush()
    try:
        current.append(json.dumps({"entries": [good], "truncated": False}).encode())
        await reachable(sz, subjects.ledger_proof_subject(WX), b"{}")
        assert await fetch_entries(sz, WX, message_id=message_id, timeout_s=5) == [received]
        for name, answer in answers.items():
            current[0] = json.dumps(answer).encode()
            with pytest.raises(PeerReadError) as err:
                await fetch_entries(sz, WX, message_id=message_id, timeout_s=5)
            want = "PEER_REFUSED" if name == "refused" else "PEER_ANSWER_INVALID"
            assert err.value.reason == want, name
            assert err.value.region == WX
    finally:
        await sub.unsubscribe()
    with pytest.raises(ValueError):
        await fetch_entries(sz, WX, message_id=message_id, trace_id=TRACE)
    with pytest.raises(ValueError):
        await fetch_entries(sz, WX, message_id="not-a-ulid")


async def test_ledger_service_reads_a_peer_region(stack: Stack) -> None:
    """GetEntries with ``region``: Shenzhen's gateway reads Wuxi's entries about Shenzhen's traffic."""
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    ch = grpc.aio.insecure_channel(stack.nodes[SZ].address)
    stack.channels.append(ch)
    ledger = ledger_pb2_grpc.LedgerStub(ch)
    got = await ledger.GetEntries(
        ledger_pb2.GetEntriesRequest(message_id=resp.message_id, region=WX), timeout=5
    )
    assert [(e.region, e.event, e.peer_region) for e in got.entries] == [
        (WX, "RECEIVED", SZ),
        (WX, "PROCESSED", SZ),
    ]
    wx_entries = await stack.nodes[WX].ledger.by_message_id(resp.message_id)
    assert [e.hash for e in got.entries] == [e.entry_hash for e in wx_entries]
    assert got.tree_size == 0 and not got.truncated
    by_trace = await ledger.GetEntries(
        ledger_pb2.GetEntriesRequest(trace_id=resp.trace_id, region=WX), timeout=5
    )
    assert list(by_trace.entries) == list(got.entries)
    own = await ledger.GetEntries(
        ledger_pb2.GetEntriesRequest(message_id=resp.message_id, region=SZ), timeout=5
    )
    assert {e.region for e in own.entries} == {SZ}  # the gateway's own region: its own ledger

    async def refused(request: ledger_pb2.GetEntriesRequest, timeout: float = 5) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ledger.GetEntries(request, timeout=timeout)
        return details_of(err.value)

    for request in (
        ledger_pb2.GetEntriesRequest(case_no=f"{SZ}-20260101-AAAAAAAAAA", region=WX),
        ledger_pb2.GetEntriesRequest(index_range=ledger_pb2.IndexRange(start=0, stop=5), region=WX),
        ledger_pb2.GetEntriesRequest(message_id="not-a-ulid", region=WX),
        ledger_pb2.GetEntriesRequest(trace_id="0" * 32, region=WX),
        ledger_pb2.GetEntriesRequest(message_id=resp.message_id, region="WUXI"),
        ledger_pb2.GetEntriesRequest(region=WX),
    ):
        d = await refused(request)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT, request
    # Qingdao is registered but runs no gateway here: nobody answers for it.
    d = await refused(ledger_pb2.GetEntriesRequest(message_id=resp.message_id, region=QD))
    assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "PEER_UNREACHABLE")
    assert d.retry
    d = await refused(ledger_pb2.GetEntriesRequest(message_id=resp.message_id, region=WX), timeout=0.05)
    assert d.code == grpc.StatusCode.DEADLINE_EXCEEDED
