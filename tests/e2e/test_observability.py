"""One trace crosses regions through the signed header; logs carry ids and never personal data;
replicas share a region's work; the gateway answers health and reflection."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import structlog
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from connectors.runtime import Connector
from tests.conftest import SZ, WX, Stack
from tests.e2e.requests import pension
from tongban.runtime.component import ComponentParts
from tongban.runtime.telemetry import add_trace_ids
from tongban.v1 import envelope_pb2

PERSON = "320213198511200025"


@pytest.fixture
def spans(tracer_provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracer_provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


async def test_one_trace_spans_both_regions(stack: Stack, spans: InMemorySpanExporter) -> None:
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == resp.trace_id]
    by_id = {s.context.span_id: s for s in mine}

    def parent_of(span: ReadableSpan) -> str:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id].name

    children: dict[str, list[str]] = {}
    for s in mine:
        if s.parent is not None:
            children.setdefault(by_id[s.parent.span_id].name, []).append(s.name)
    by_name = {s.name: s for s in mine}
    rpc, send = by_name["tongban.v1.Exchange/Query"], by_name[f"send tb.v1.rpc.{WX}.>"]
    assert rpc.parent is None
    assert sorted(children[rpc.name]) == sorted(
        ["gateway.validate", send.name, "gateway.verify_reply", "gateway.respond"]
    )
    # Sealing and signing happen inside the PRODUCER span the envelope names as its parent...
    assert sorted(children[send.name]) == ["connector.receive", "envelope.seal", "envelope.sign"]
    receive = by_name["connector.receive"]
    assert receive.parent is not None and receive.parent.is_remote  # ...continued from the signed header
    assert sorted(children["connector.receive"]) == [
        "connector.adapter",
        "connector.open",
        "connector.reply",
        "connector.verify",
    ]
    assert sorted(children["connector.reply"]) == ["envelope.seal", "envelope.sign"]  # sealed for Shenzhen
    assert parent_of(by_name["connector.adapter"]) == "connector.receive"
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.method"] == "Query"
    assert send.attributes["messaging.system"] == "nats"
    assert send.attributes["messaging.destination.name"] == f"tb.v1.rpc.{WX}.SBJFJLCX0001"
    assert receive.attributes["messaging.system"] == "nats"
    assert receive.attributes["tongban.message_id"] == resp.message_id
    for s in mine:
        assert PERSON not in str(dict(s.attributes or {}))


async def test_logs_carry_ids_and_no_personal_data(stack: Stack) -> None:
    # The same context processors as production: contextvars (message id) and the trace ids.
    with capture_logs(processors=[structlog.contextvars.merge_contextvars, add_trace_ids]) as logs:
        resp = await stack.stub(SZ).Query(pension(), timeout=10)
    request_lines = [e for e in logs if e.get("message_id") == resp.message_id]
    assert {e["event"] for e in request_lines} >= {"rpc.ok", "request.processed"}
    assert {e["trace_id"] for e in request_lines} == {resp.trace_id}
    assert PERSON not in repr(logs)
    assert PERSON[:10] not in repr(logs)


async def test_connector_replicas_share_the_work(stack: Stack) -> None:
    node = stack.nodes[WX]
    cfg = node.cfg
    replica = Connector(ComponentParts.load(cfg, "connector", node.ledger), adapters=node.adapters)
    await replica.start()
    try:
        first = node.connector
        assert first is not None
        before = first.handled
        stub = stack.stub(SZ)
        for _ in range(40):
            await stub.Query(pension(), timeout=10)
        # NATS spreads a queue group's messages at random: with 40 requests, each replica gets some
        # unless something is wrong (the chance that one gets none is 2 * 2**-40).
        assert first.handled - before > 0 and replica.handled > 0
        assert first.handled - before + replica.handled == 40
    finally:
        await replica.stop()


async def test_reflection_lists_exchange(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.nodes[SZ].address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def requests() -> object:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="tongban.v1.Exchange")

        names: list[str] = []
        files: list[str] = []
        async for r in stub.ServerReflectionInfo(requests(), timeout=5):
            names += [s.name for s in r.list_services_response.service]
            for raw in r.file_descriptor_response.file_descriptor_proto:
                files.append(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
    assert "tongban.v1.Exchange" in names and "grpc.health.v1.Health" in names
    assert "tongban/v1/exchange.proto" in files


async def test_submit_trace_continues_in_the_handling_region(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    from tests.e2e.cases import submit_request, watch

    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    await watch(stub, receipt.case_no)
    mine = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == receipt.trace_id]
    by_id = {s.context.span_id: s for s in mine}
    by_name = {s.name: s for s in mine}
    publish = by_name[f"publish tb.v1.out.{SZ}.>"]
    forward = by_name[f"forward tb.v1.req.{WX}.>"]
    receive = by_name["connector.receive"]
    assert by_id[publish.parent.span_id].name == "tongban.v1.Exchange/Submit"  # type: ignore[union-attr]
    # Days later and through two streams, the forwarder and then the connector continue the trace:
    # the forwarder from the stream message's traceparent, the connector from the signed header,
    # refined to the forwarder's span (same trace id) by the NATS header.
    assert forward.parent is not None and forward.parent.span_id == publish.context.span_id
    assert receive.parent is not None and receive.parent.is_remote
    assert receive.parent.span_id == forward.context.span_id
    assert receive.attributes["messaging.destination.name"] == f"tb.v1.req.{WX}.>"
    assert forward.attributes["messaging.destination.name"] == f"tb.v1.req.{WX}.YLBXZYJX0001"
    assert by_name["connector.adapter"].parent.span_id == receive.context.span_id  # type: ignore[union-attr]
    for s in mine:
        assert "44030419900307123X" not in str(dict(s.attributes or {}))


async def test_an_unsigned_traceparent_cannot_move_a_request_into_another_trace(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    """The NATS ``traceparent`` header only refines the parent within the trace the signed header
    names; one naming another trace is ignored."""
    connector = stack.nodes[WX].connector
    assert connector is not None
    signed_tp = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    same_trace = "00-" + "1" * 32 + "-" + "3" * 16 + "-01"
    other_trace = "00-" + "9" * 32 + "-" + "4" * 16 + "-01"
    header = envelope_pb2.Header(traceparent=signed_tp)
    for transport, parent_span in ((same_trace, "3" * 16), (other_trace, "2" * 16), ("", "2" * 16)):
        with connector.inbound.receive_scope(header, "tb.v1.req.320200.>", transport) as span:
            assert isinstance(span, ReadableSpan) and span.parent is not None
            assert format(span.context.trace_id, "032x") == "1" * 32
            assert format(span.parent.span_id, "016x") == parent_span
