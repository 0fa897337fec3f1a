"""Receipts and the Ledger service: a delivery the sender can prove later.

Wuxi's connector signs a receipt naming the ledger leaf that recorded Shenzhen's request; Shenzhen
verifies and keeps it; Wuxi's Ledger service returns the entry and an inclusion proof that checks
against the tree's root.
"""

from __future__ import annotations

import time

import grpc
import pytest

from ledger import Event
from ledger.merkle import verify_consistency, verify_inclusion
from tests.conftest import SZ, WX, Stack
from tests.e2e.cases import submit_request, watch
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tongban.core.receipts import verify_receipt
from tongban.runtime.config import Config
from tongban.runtime.node import load_registry
from tongban.v1 import envelope_pb2, ledger_pb2, ledger_pb2_grpc


def ledger_stub(stack: Stack, region: str) -> ledger_pb2_grpc.LedgerStub:
    ch = grpc.aio.insecure_channel(stack.nodes[region].address)
    stack.channels.append(ch)
    return ledger_pb2_grpc.LedgerStub(ch)


def check_receipt(stack: Stack, signed: bytes) -> envelope_pb2.Receipt:
    registry = load_registry(Config.load(stack.state.config_path(SZ)))
    return verify_receipt(
        signed, lambda kid, region, _at: registry.signing_public_key(kid, region=region, at_s=time.time())
    )


async def proves(
    stub: ledger_pb2_grpc.LedgerStub, leaf_index: int, tree_size: int = 0
) -> ledger_pb2.GetInclusionProofResponse:
    proof = await stub.GetInclusionProof(
        ledger_pb2.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size), timeout=5
    )
    verify_inclusion(proof.leaf_hash, proof.leaf_index, proof.tree_size, list(proof.proof), proof.root_hash)
    return proof


async def test_query_receipt_names_the_leaf_that_recorded_the_request(stack: Stack) -> None:
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    assert resp.receipt
    receipt = envelope_pb2.Receipt.FromString(envelope_pb2.SignedReceipt.FromString(resp.receipt).receipt)
    assert (receipt.region, receipt.message_id, receipt.envelope_digest) == (
        WX,
        resp.message_id,
        resp.request_digest,
    )
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None and gateway.cases is not None
    assert await gateway.cases.receipt(resp.message_id) == resp.receipt  # the sender keeps it

    wx = ledger_stub(stack, WX)
    got = await wx.GetEntries(ledger_pb2.GetEntriesRequest(message_id=resp.message_id), timeout=5)
    assert [e.event for e in got.entries] == [Event.RECEIVED, Event.PROCESSED]
    received = got.entries[0]
    assert received.index == receipt.leaf_index and received.envelope_digest == resp.request_digest
    proof = await proves(wx, receipt.leaf_index, got.tree_size)
    assert proof.leaf_hash == received.leaf_hash
    # Against the region's signed checkpoint (the default size) once one covers the leaf.
    gateway_wx = stack.nodes[WX].gateway
    assert gateway_wx is not None and gateway_wx.publisher is not None
    signed = await gateway_wx.publisher.signer.sign_now()
    at_checkpoint = await proves(wx, receipt.leaf_index)
    assert (at_checkpoint.tree_size, at_checkpoint.root_hash) == (
        signed.checkpoint.size,
        signed.checkpoint.root,
    )
    latest = await wx.GetLatestCheckpoint(ledger_pb2.GetLatestCheckpointRequest(), timeout=5)
    assert latest.checkpoint == signed.note
    # The tree only grows: the root of an earlier size is consistent with today's.
    cons = await wx.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(old_size=1), timeout=5)
    verify_consistency(cons.old_size, cons.new_size, cons.old_root, cons.new_root, list(cons.proof))


async def test_submit_receipt_arrives_with_the_first_event(stack: Stack) -> None:
    stub = stack.stub(SZ)
    ack = await stub.Submit(submit_request(key="receipt-1"), timeout=10)
    await watch(stub, ack.case_no)
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None and gateway.cases is not None
    signed = await gateway.cases.receipt(ack.message_id)
    assert signed is not None
    receipt = check_receipt(stack, signed)
    assert (receipt.region, receipt.message_id) == (WX, ack.message_id)
    wx = ledger_stub(stack, WX)
    entry = (
        await wx.GetEntries(
            ledger_pb2.GetEntriesRequest(
                index_range=ledger_pb2.IndexRange(start=receipt.leaf_index, stop=receipt.leaf_index + 1)
            ),
            timeout=5,
        )
    ).entries[0]
    assert (entry.event, entry.message_id, entry.envelope_digest) == (
        Event.RECEIVED,
        ack.message_id,
        receipt.envelope_digest,
    )
    await proves(wx, receipt.leaf_index, receipt.leaf_index + 1)


async def test_entries_by_trace_id_and_time(stack: Stack) -> None:
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    sz = ledger_stub(stack, SZ)
    by_trace = await sz.GetEntries(ledger_pb2.GetEntriesRequest(trace_id=resp.trace_id), timeout=5)
    assert [e.event for e in by_trace.entries] == [Event.SUBMITTED, Event.RESPONDED]
    first = by_trace.entries[0].time
    by_time = await sz.GetEntries(
        ledger_pb2.GetEntriesRequest(time_range=ledger_pb2.TimeRange(start=first)), timeout=5
    )
    assert [e.index for e in by_time.entries][:2] == [e.index for e in by_trace.entries]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ledger_pb2.GetInclusionProofRequest(leaf_index=10_000), "leaf_index"),
        (ledger_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=10_000), "tree_size"),
    ],
    ids=["leaf-beyond-size", "size-beyond-ledger"],
)
async def test_bad_proof_requests_are_field_violations(
    stack: Stack, request_: ledger_pb2.GetInclusionProofRequest, field: str
) -> None:
    await stack.stub(SZ).Query(pension(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ledger_stub(stack, WX).GetInclusionProof(request_, timeout=5)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and list(d.violations) == [field]


async def test_entries_need_a_selector(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ledger_stub(stack, WX).GetEntries(ledger_pb2.GetEntriesRequest(), timeout=5)
    assert details_of(err.value).violations.keys() == {"selector"}
