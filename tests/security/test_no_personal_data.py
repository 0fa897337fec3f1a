"""A full run with real identifiers: none of them may appear in clear in logs, on NATS, in spans or
in the ledgers.

Every catalogue item is queried and submitted with valid citizen ID numbers, unified social credit
codes, names and a phone number (the vectors in tests/vectors/catalogue_requests.json plus the
applicant's name and phone), and some requests are refused for bad input that contains an ID. While
it runs: the production log pipeline (JSON renderer, debug level) writes to a buffer, a wiretap on
every region's nats-server records each subject, header and payload, and the tracer records every
span; afterwards every gateway's and connector's ``/metrics`` and ``/readyz`` are read over HTTP.
Then each personal value, and its first ten characters, is searched for in all of it.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import structlog
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.interceptors import TRACE_ID_METADATA
from tests.conftest import SZ, WX, Stack
from tests.e2e.cases import submit_request
from tests.e2e.metered import Metered, start_metered_stack, stop_metered_stack
from tests.e2e.requests import build, cases, pension
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.telemetry import configure_logging
from tongban.v1 import catalogue_pb2, exchange_pb2, ledger_pb2
from tongban.v1.ledger_pb2_grpc import LedgerStub

NAME, PHONE = "李小明", "13912345678"
BAD_ID = "320213198511200026"  # a real-looking ID with a wrong check digit: refused, never echoed
HOSTILE = {
    # A valid ID number put by the caller into each field it controls that is not personal data by
    # contract (one number per path, so a leak names its path). None of them may be stored or logged.
    "traceparent": "320213198511200025",
    "service_code": "440304198001010017",
    "target_region": "110105197002020035",
    "idempotency_key": "310115197503030047",
    "case_no": "410102198805050066",
    "ledger_selector": "440601199006060074",
    "field_name": "320202199107070084",
}


def personal_values() -> set[str]:
    values = {NAME, PHONE, BAD_ID, *HOSTILE.values()}
    for case in cases():
        values.add(case["applicant"]["id_no"])
        for key, value in case.get("fields", {}).items():
            if key.endswith(("_id", "_phone")):
                values.add(value)
    return values


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=buf)
    try:
        yield buf
    finally:
        structlog.reset_defaults()


@pytest.fixture
async def metered(topology: Topology, state: DevState) -> AsyncIterator[Metered]:
    """The stack, each gateway and connector with its metrics endpoint."""
    m = await start_metered_stack(topology, state)
    try:
        yield m
    finally:
        await stop_metered_stack(m)


@pytest.fixture
def spans(tracer_provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def _span_text(s: ReadableSpan) -> str:
    return json.dumps(
        {
            "name": s.name,
            "attributes": dict(s.attributes or {}),
            "events": [dict(e.attributes or {}) for e in s.events],
        },
        ensure_ascii=False,
        default=str,
    )


async def test_no_personal_data_in_logs_nats_spans_ledgers_or_metrics(
    metered: Metered, log_buffer: io.StringIO, spans: InMemorySpanExporter
) -> None:
    stack = metered.stack
    tapped: list[str] = []
    taps = []

    async def tap(msg: Msg) -> None:
        headers = json.dumps(msg.headers or {}, ensure_ascii=False)
        tapped.append(f"{msg.subject} {msg.reply} {headers} " + msg.data.decode("utf-8", "replace"))

    for region in stack.nodes:
        nc = await stack.nats(region)
        await nc.subscribe(">", cb=tap)
        await nc.flush()
        taps.append(nc)
    try:
        stub = stack.stub(SZ)
        answered = submitted = 0
        for case in cases():
            q = build(case)
            q.request.applicant.name = NAME
            q.request.applicant.phone = PHONE
            try:
                await stub.Query(q, timeout=10)
                answered += 1
            except grpc.aio.AioRpcError as exc:  # some items are not Query-able: still a full path
                assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), exc
        assert answered >= 6
        submitted = 0
        catalogue = Catalogue.load()
        for i, case in enumerate(cases()):
            item = catalogue.get(case["service_code"])
            if item is None or item.handling_mode == catalogue_pb2.HANDLING_MODE_QUERY:
                continue
            req = submit_request(key=f"pii-{i}")
            req.request.CopyFrom(build(case).request)
            req.request.idempotency_key = f"pii-{i}"
            req.request.applicant.name = NAME
            await stub.Submit(req, timeout=10)
            submitted += 1
        assert submitted >= 3
        bad = build(cases()[0])
        bad.request.applicant.id_no = BAD_ID
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Query(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert BAD_ID not in (err.value.details() or "")
        refused = await _hostile_calls(stack)

        async def all_settled() -> bool:
            return await stack.nodes[WX].ledger.size() >= answered * 2 + submitted * 2 + 1

        await eventually(all_settled, timeout=30, what="every request handled in Wuxi")
    finally:
        for nc in taps:
            await nc.close()

    logs = log_buffer.getvalue()
    span_text = "\n".join(_span_text(s) for s in spans.get_finished_spans())
    ledger_text = ""
    for node in stack.nodes.values():
        ledger_text += "\n".join(repr(e) for e in await node.ledger.entries())
    nats_text = "\n".join(tapped)
    metrics_text = ""
    for region, role in metered.monitors:
        for path in ("/metrics", "/readyz"):
            status, body = await metered.get(region, role, path)
            assert status == 200, (region, role, path)
            metrics_text += body
    # The scan is only worth something if each source really saw the run.
    assert logs.count("\n") >= answered + submitted and '"message_id"' in logs
    assert len(tapped) > 20 and any(".req." in t for t in tapped) and any(".rpc." in t for t in tapped)
    assert len(spans.get_finished_spans()) > 20
    assert ledger_text.count("PROCESSED") >= answered
    assert ledger_text.count("REJECTED") >= refused
    assert metrics_text.count("tongban_requests_total{") >= 4 and 'outcome="INVALID_REQUEST"' in metrics_text
    for value in personal_values():
        for where, text in (
            ("logs", logs),
            ("NATS", nats_text),
            ("spans", span_text),
            ("ledger", ledger_text),
            ("metrics", metrics_text),
        ):
            assert value not in text, f"{value[:4]}… in clear in {where}"
            if len(value) >= 15:
                assert value[:10] not in text, f"{value[:4]}… (first ten characters) in {where}"


async def _hostile_calls(stack: Stack) -> int:
    """ID numbers through every caller-controlled field that is not personal data by contract; the
    answers are checked here, what is left behind by the scan. Returns the calls refused."""
    stub = stack.stub(SZ)
    channel = grpc.aio.insecure_channel(stack.nodes[SZ].address)
    stack.channels.append(channel)
    ledger = LedgerStub(channel)
    query = pension()
    # A partner's own trace context, its trace id shaped around an ID number: the call is served, in
    # a trace of the gateway's own, named in the answer's metadata.
    traceparent = f"00-{HOSTILE['traceparent']}{'a' * 14}-{'b' * 16}-01"
    call = stub.Query(query, timeout=10, metadata=(("traceparent", traceparent),))
    answer = await call
    ours = dict(await call.initial_metadata())[TRACE_ID_METADATA]
    assert answer.trace_id == ours and HOSTILE["traceparent"] not in ours
    await stub.Submit(submit_request(key="pii-trace"), timeout=10, metadata=(("traceparent", traceparent),))

    refused = 0
    for field in ("service_code", "target_region", "field_name"):
        q, sub = exchange_pb2.QueryRequest(), submit_request(key=f"pii-{field}")
        q.CopyFrom(query)
        for req in (q.request, sub.request):
            if field == "field_name":
                req.fields[HOSTILE[field]] = "1"
            else:
                setattr(req, field, HOSTILE[field])
        for call in (stub.Query(q, timeout=10), stub.Submit(sub, timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert HOSTILE[field] not in repr(err.value), field
            refused += 1
    # An ID number as idempotency key is a valid key: the case is accepted, the key kept only as a digest.
    await stub.Submit(submit_request(key=HOSTILE["idempotency_key"]), timeout=10)
    # Case numbers and ledger selectors asked for: refused or not found, never echoed.
    for ask in (
        stub.GetCase(exchange_pb2.GetCaseRequest(case_no=HOSTILE["case_no"]), timeout=10),
        ledger.GetEntries(ledger_pb2.GetEntriesRequest(case_no=HOSTILE["case_no"]), timeout=10),
        ledger.GetEntries(ledger_pb2.GetEntriesRequest(message_id=HOSTILE["ledger_selector"]), timeout=10),
        ledger.GetEntries(ledger_pb2.GetEntriesRequest(trace_id=HOSTILE["ledger_selector"]), timeout=10),
    ):
        try:
            await ask
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), exc
            assert HOSTILE["case_no"] not in repr(exc) and HOSTILE["ledger_selector"] not in repr(exc)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchCase(exchange_pb2.WatchCaseRequest(case_no=HOSTILE["case_no"]), timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    return refused


def test_values_scanned_for_are_the_real_ones() -> None:
    values = personal_values()
    assert "44030419900307123X" in values and "91320214135896270C" in values and "13812345678" in values
