"""One trace across regions and processes, as an operator's tracing back end receives it.

The dev stack runs as real processes: per region a nats-server leaf, a gateway and a connector (plus
the hub). Gateways and connectors export their spans by OTLP/gRPC, as ``tongban dev --otlp`` makes
them, to a receiver in this test that keeps them in memory: the span tree below is what Jaeger or
Tempo would draw. The same request's JSON log lines, read from the processes' log files, all carry
its trace id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.metered import Scrape, http_get
from tests.e2e.requests import pension
from tests.helpers import eventually
from tongban.ops.dev import DevStack
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SZ, WX = "440300", "320200"
PERSON = "320213198511200025"


@dataclass(frozen=True)
class ExportedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, object]
    service: str
    region: str
    pid: int


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent (a collector's in-memory stand-in)."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ExportedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            service=str(res.get("service.name")),
                            region=str(res.get("tongban.region")),
                            pid=int(res.get("process.pid", 0)),  # type: ignore[call-overload]
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[ExportedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    rec = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield rec, port
    finally:
        await server.stop(0)


@pytest.fixture
async def dev_stack(
    tmp_path: Path, receiver: tuple[Receiver, int], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DevStack]:
    # The batch processor's default is to export every 5 s; a tenth of that keeps the test short.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    stack = DevStack(tmp_path / "dev", otlp_endpoint=f"127.0.0.1:{receiver[1]}")
    try:
        await stack.start(timeout=90)
        yield stack
    finally:
        await stack.stop()


# Every hop of a cross-region query, by the process that records it, with its parent span.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "tongban.v1.Exchange/Query": ("gateway", None),
    "gateway.validate": ("gateway", "tongban.v1.Exchange/Query"),
    f"send tb.v1.rpc.{WX}.>": ("gateway", "tongban.v1.Exchange/Query"),
    "connector.receive": ("connector", f"send tb.v1.rpc.{WX}.>"),
    "connector.verify": ("connector", "connector.receive"),
    "connector.open": ("connector", "connector.receive"),
    "connector.adapter": ("connector", "connector.receive"),
    "connector.reply": ("connector", "connector.receive"),
    "gateway.verify_reply": ("gateway", "tongban.v1.Exchange/Query"),
    "gateway.respond": ("gateway", "tongban.v1.Exchange/Query"),
}


async def _query(stack: DevStack) -> exchange_pb2.QueryResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[SZ]}") as ch:
        resp: exchange_pb2.QueryResponse = await exchange_pb2_grpc.ExchangeStub(ch).Query(
            pension(), timeout=10
        )
        return resp


async def test_one_trace_covers_every_hop_across_processes(
    dev_stack: DevStack, receiver: tuple[Receiver, int]
) -> None:
    rec, _ = receiver
    resp = await _query(dev_stack)
    assert resp.responder_region == WX

    def complete() -> bool:
        names = [s.name for s in rec.of_trace(resp.trace_id)]
        return set(EXPECTED) <= set(names) and names.count("envelope.sign") >= 2

    await eventually(complete, timeout=30, what="every hop's span exported")
    spans = rec.of_trace(resp.trace_id)
    by_id = {s.span_id: s for s in spans}
    by_name = {s.name: s for s in spans}
    roles = {"gateway": ("tongban-gateway", SZ), "connector": ("tongban-connector", WX)}
    for name, (role, parent) in EXPECTED.items():
        span = by_name[name]
        assert (span.service, span.region) == roles[role], name
        if parent is None:
            assert span.parent_span_id == "", name
        else:
            assert by_id[span.parent_span_id].name == parent, name
    # Sealing and signing: the request's inside the PRODUCER span, the answer's inside the reply.
    for s in (x for x in spans if x.name.startswith("envelope.")):
        assert by_id[s.parent_span_id].name in (f"send tb.v1.rpc.{WX}.>", "connector.reply")
    assert sorted(s.name for s in spans if s.name.startswith("envelope.")) == [
        "envelope.seal",
        "envelope.seal",
        "envelope.sign",
        "envelope.sign",
    ]
    # One tree: every span but the root has its parent in the trace, across the two processes.
    assert [s.name for s in spans if s.parent_span_id == ""] == ["tongban.v1.Exchange/Query"]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id)
    gateway_pid, connector_pid = by_name["gateway.validate"].pid, by_name["connector.verify"].pid
    assert len({gateway_pid, connector_pid, os.getpid()}) == 3
    assert {c.proc.pid for c in dev_stack.children} >= {gateway_pid, connector_pid}

    rpc, send, receive = (
        by_name[n] for n in ("tongban.v1.Exchange/Query", f"send tb.v1.rpc.{WX}.>", "connector.receive")
    )
    assert (rpc.kind, send.kind, receive.kind) == (2, 4, 5)  # SERVER, PRODUCER, CONSUMER (OTLP values)
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.service"] == "tongban.v1.Exchange" and rpc.attributes["rpc.method"] == "Query"
    assert send.attributes["messaging.system"] == "nats"
    assert send.attributes["messaging.destination.name"] == f"tb.v1.rpc.{WX}.SBJFJLCX0001"
    assert send.attributes["messaging.message.id"] == resp.message_id
    assert receive.attributes["messaging.system"] == "nats"
    assert receive.attributes["tongban.message_id"] == resp.message_id
    assert receive.attributes["tongban.service_code"] == "SBJFJLCX0001"
    assert receive.attributes["tongban.peer_region"] == SZ
    for s in spans:
        assert PERSON not in repr(s.attributes) and PERSON[:10] not in repr(s.attributes)


_HEX = {"trace_id": re.compile(r"[0-9a-f]{32}"), "span_id": re.compile(r"[0-9a-f]{16}")}


async def test_every_log_line_of_a_request_carries_its_trace_id(dev_stack: DevStack) -> None:
    resp = await _query(dev_stack)
    logs = {
        (region, role): dev_stack.root / region / f"{role}.log"
        for region, role in ((SZ, "gateway"), (WX, "connector"))
    }

    def lines() -> dict[tuple[str, str], list[dict[str, object]]]:
        """The request's lines: any naming its message id or its trace id (complete lines only:
        a process may be writing the last one)."""
        found: dict[tuple[str, str], list[dict[str, object]]] = {}
        for key, path in logs.items():
            text = path.read_text()
            for raw in text[: text.rfind("\n") + 1].splitlines():
                if resp.message_id in raw or resp.trace_id in raw:
                    found.setdefault(key, []).append(json.loads(raw))
        return found

    # The gateway logs its line as the RPC ends; the file may trail the answer by a moment.
    await eventually(lambda: len(lines()) == 2, timeout=10, what="a log line in both processes")
    found = lines()
    events = {key: [e["event"] for e in entries] for key, entries in found.items()}
    assert "rpc.ok" in events[(SZ, "gateway")]
    assert "request.processed" in events[(WX, "connector")]
    for (region, _), entries in found.items():
        for e in entries:
            assert e.get("message_id") == resp.message_id, e
            assert e.get("trace_id") == resp.trace_id, e
            for key, pattern in _HEX.items():
                assert pattern.fullmatch(str(e[key])), e
            assert e["region"] == region and e["service_code"] == "SBJFJLCX0001"
            assert e["level"] in ("info", "warning", "debug") and str(e["timestamp"]).endswith("Z")
    for path in logs.values():
        text = path.read_text()
        assert PERSON not in text and PERSON[:10] not in text


async def test_a_submit_trace_crosses_the_forwarder_into_the_other_regions_connector(
    dev_stack: DevStack, receiver: tuple[Receiver, int]
) -> None:
    """Store and forward: Submit RPC → publish into Shenzhen's outbound stream → the forwarder's
    hop into Wuxi's stream → Wuxi's connector (a durable consumer) → the back end."""
    rec, _ = receiver
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dev_stack.ports[SZ]}") as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        receipt = await stub.Submit(submit_request(), timeout=10)
        await watch(stub, receipt.case_no)
    names = {
        "rpc": "tongban.v1.Exchange/Submit",
        "publish": f"publish tb.v1.out.{SZ}.>",
        "forward": f"forward tb.v1.req.{WX}.>",
        "receive": "connector.receive",
        "adapter": "connector.adapter",
    }
    await eventually(
        lambda: set(names.values()) <= {s.name for s in rec.of_trace(receipt.trace_id)},
        timeout=30,
        what="the Submit's hops exported",
    )
    spans = rec.of_trace(receipt.trace_id)
    by_id = {s.span_id: s for s in spans}
    first = {n: next(s for s in spans if s.name == n) for n in names.values()}
    rpc, publish, forward, receive, adapter = (first[names[k]] for k in names)
    assert rpc.parent_span_id == ""
    assert by_id[publish.parent_span_id] is rpc
    assert by_id[forward.parent_span_id] is publish  # from the stream message's traceparent
    assert by_id[receive.parent_span_id] is forward  # the signed trace, refined by the NATS header
    assert by_id[adapter.parent_span_id] is receive
    assert (rpc.service, publish.service, forward.service) == ("tongban-gateway",) * 3
    assert (receive.service, receive.region) == ("tongban-connector", WX)
    assert rpc.pid != receive.pid
    assert forward.attributes["messaging.operation.name"] == "forward"
    assert forward.attributes["messaging.destination.name"] == f"tb.v1.req.{WX}.{CASE_SERVICE}"
    assert receive.attributes["messaging.destination.name"] == f"tb.v1.req.{WX}.>"


async def test_each_process_serves_metrics_and_probes(dev_stack: DevStack) -> None:
    """The dev stack's gateway and connector processes serve /metrics, /livez and /readyz; after a
    query, both regions' counters show it."""
    resp = await _query(dev_stack)
    want = {(SZ, "gateway"): ("rpc", "Query"), (WX, "connector"): ("rpc", "Query")}
    for (region, role), (label, value) in want.items():
        url = dev_stack.metrics_url(region, role)
        assert url.startswith("http://127.0.0.1:")

        async def counted(url: str = url, label: str = label, value: str = value) -> bool:
            status, text = await http_get(url)
            return status == 200 and Scrape(text).total("tongban_requests_total", **{label: value}) >= 1

        await eventually(counted, what=f"{region} {role} counts the query")
        for probe in ("/livez", "/readyz"):
            status, _ = await http_get(url.removesuffix("/metrics") + probe)
            assert status == 200, (region, role, probe)
        _, text = await http_get(url)
        assert resp.message_id not in text and resp.trace_id not in text
