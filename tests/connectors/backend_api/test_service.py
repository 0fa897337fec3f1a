"""CaseBackend on a real gRPC server on port 0: the pull stream and its leases, acknowledgements,
status reports, and what it makes of bad input and bad callers.

Status reports go to a stand-in for the case worker (``RecordingCaseWorker``): signing and
sending them to the submitting region is the case worker's, tested end to end in
tests/e2e/test_backend_api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from connectors.adapters import MissingItem, StatusUpdate
from connectors.backend_api import BackendApi
from connectors.backend_api.server import MAX_REQUEST_BYTES
from tests.connectors.backend_api.helpers import (
    KNOWN_CASE,
    SERVICE,
    RecordingCaseWorker,
    api_config,
    case_request,
    region_keys,
)
from tests.e2e.grpc_errors import details_of
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.core.message_ids import new_case_no, new_message_id
from tongban.runtime import certs
from tongban.v1 import backend_pb2, backend_pb2_grpc, exchange_pb2


class Running:
    def __init__(self, api: BackendApi, worker: RecordingCaseWorker, channel: grpc.aio.Channel) -> None:
        self.api = api
        self.worker = worker
        self.channel = channel
        self.stub = backend_pb2_grpc.CaseBackendStub(channel)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    api = BackendApi(api_config(tmp_path, lease_s=0.5), secrets=region_keys(), catalogue=Catalogue.load())
    worker = RecordingCaseWorker()
    await api.start(worker.report_status)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{api.port}")
    try:
        yield Running(api, worker, channel)
    finally:
        await channel.close()
        await api.stop()


async def _next(call: grpc.aio.UnaryStreamCall, timeout: float = 5.0) -> backend_pb2.Delivery:
    item = await asyncio.wait_for(call.read(), timeout)
    assert item is not grpc.aio.EOF
    return item.delivery  # type: ignore[union-attr]


async def test_pending_first_then_new_ones_as_they_arrive(running: Running) -> None:
    desk = running.api.adapter()
    first, second, third = case_request(), case_request(), case_request()
    await desk.submit_case(first)
    await desk.submit_case(second)
    call = running.stub.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(lease_seconds=60), timeout=30)
    got = [await _next(call), await _next(call)]
    assert [d.delivery_id for d in got] == [first.message_id, second.message_id]
    d = got[0]
    assert (d.case_no, d.service_code, d.requester_region, d.origin_system, d.purpose, d.attempt) == (
        first.case_no,
        SERVICE,
        "440300",
        "szgov-ywtb",
        "KSTB_CASE_HANDLING",
        1,
    )
    assert d.applicant.kind == exchange_pb2.APPLICANT_KIND_PERSON and dict(d.fields) == dict(first.fields)
    await desk.submit_case(third)  # wakes the waiting stream
    assert (await _next(call)).delivery_id == third.message_id
    ack = backend_pb2.AckDeliveryRequest(delivery_id=first.message_id, local_code="WX-7", local_system="ywtb")
    assert (await running.stub.AckDelivery(ack, timeout=5)).first
    assert not (await running.stub.AckDelivery(ack, timeout=5)).first
    call.cancel()


async def test_unacknowledged_comes_again_after_the_lease(running: Running) -> None:
    request = case_request()
    await running.api.adapter().submit_case(request)
    call = running.stub.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(), timeout=30)  # lease 0.5 s
    assert (await _next(call)).attempt == 1
    again = await _next(call)  # not acknowledged: the lease runs out and it comes again
    assert (again.delivery_id, again.attempt) == (request.message_id, 2)
    await running.stub.AckDelivery(backend_pb2.AckDeliveryRequest(delivery_id=request.message_id), timeout=5)
    with pytest.raises(TimeoutError):
        await _next(call, timeout=1.5)  # acknowledged: never again (three leases' time)
    call.cancel()


async def test_two_watchers_never_hold_the_same_delivery(running: Running) -> None:
    requests = [case_request() for _ in range(6)]
    for r in requests:
        await running.api.adapter().submit_case(r)
    calls = [
        running.stub.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(lease_seconds=600), timeout=30)
        for _ in range(2)
    ]
    seen: list[list[str]] = [[], []]

    async def drain(i: int) -> None:
        while True:
            seen[i].append((await _next(calls[i])).delivery_id)

    tasks = [asyncio.create_task(drain(i)) for i in range(2)]
    try:
        await eventually(lambda: len(seen[0]) + len(seen[1]) == 6, what="all six streamed")
    finally:
        for t in tasks:
            t.cancel()
        for c in calls:
            c.cancel()
    assert sorted(seen[0] + seen[1]) == sorted(r.message_id for r in requests)


async def test_what_an_ended_stream_held_goes_to_the_next_at_once(running: Running) -> None:
    request = case_request()
    await running.api.adapter().submit_case(request)
    first = running.stub.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(lease_seconds=600), timeout=30)
    assert (await _next(first)).delivery_id == request.message_id
    first.cancel()
    second = running.stub.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(lease_seconds=600), timeout=30)
    again = await _next(second)  # long before the 600 s lease
    assert (again.delivery_id, again.attempt) == (request.message_id, 2)
    second.cancel()


async def test_only_the_service_codes_asked_for(running: Running) -> None:
    await running.api.adapter().submit_case(case_request(service="ZFGJJTQ00001"))
    wanted = case_request()
    await running.api.adapter().submit_case(wanted)
    call = running.stub.WatchDeliveries(
        backend_pb2.WatchDeliveriesRequest(service_codes=[SERVICE]), timeout=30
    )
    assert (await _next(call)).delivery_id == wanted.message_id
    call.cancel()


async def test_report_status_hands_a_checked_update_to_the_case_worker(running: Running) -> None:
    request = backend_pb2.ReportStatusRequest(
        case_no=KNOWN_CASE,
        status=exchange_pb2.CASE_STATUS_SUPPLEMENT_REQUESTED,
        local_code="BZ",
        local_system="wx-ywtb",
        note="请补充劳动合同",
        missing=[
            exchange_pb2.MissingItem(
                kind=exchange_pb2.MISSING_ITEM_KIND_MATERIAL, name="劳动合同", reason="未上传"
            ),
            exchange_pb2.MissingItem(kind=exchange_pb2.MISSING_ITEM_KIND_FIELD, name="new_employer_name"),
        ],
    )
    request.report_id = "WX-BZ-2026-000017"
    answer = await running.stub.ReportStatus(request, timeout=5)
    assert answer.sequence == 3 and answer.event_id
    assert running.worker.report_ids == ["WX-BZ-2026-000017"]
    assert running.worker.reports == [
        (
            KNOWN_CASE,
            [
                StatusUpdate(
                    6,
                    "BZ",
                    "wx-ywtb",
                    "请补充劳动合同",
                    missing=(
                        MissingItem("material", "劳动合同", "未上传"),
                        MissingItem("field", "new_employer_name"),
                    ),
                )
            ],
        )
    ]


async def test_a_report_whose_caller_gives_up_still_completes(running: Running) -> None:
    running.worker.hold = asyncio.Event()
    request = backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=exchange_pb2.CASE_STATUS_APPROVED)
    call = running.stub.ReportStatus(request, timeout=2)
    async with asyncio.timeout(10):
        await running.worker.started.wait()  # the report has begun; it is held until released
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert running.worker.reports == []
    running.worker.hold.set()
    await eventually(lambda: len(running.worker.reports) == 1, what="the report sent to its end")


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (backend_pb2.ReportStatusRequest(case_no="not-a-case", status=11), "case_no", "INVALID_REQUEST"),
        (backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=0), "status", "INVALID_REQUEST"),
        (backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=99), "status", "INVALID_REQUEST"),  # type: ignore[arg-type]
        (
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=11, note="办结\u202e"),
            "note",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=11, note="x" * 1001),
            "note",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=11, local_code="A\nforged log line"),
            "local_code",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(
                case_no=KNOWN_CASE, status=11, missing=[exchange_pb2.MissingItem(kind=1, name="劳动合同")]
            ),
            "missing",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(
                case_no=KNOWN_CASE, status=6, missing=[exchange_pb2.MissingItem(name="x")]
            ),
            "missing[0].kind",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(
                case_no=KNOWN_CASE, status=6, missing=[exchange_pb2.MissingItem(kind=1, name="合同\u200b")]
            ),
            "missing[0].name",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(
                case_no=KNOWN_CASE, status=6, missing=[exchange_pb2.MissingItem(kind=1, name="x")] * 51
            ),
            "missing",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=8, report_id="forged\nline"),
            "report_id",
            "INVALID_REQUEST",
        ),
        (
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=8, report_id="x" * 65),
            "report_id",
            "INVALID_REQUEST",
        ),
    ],
)
async def test_bad_status_reports_are_refused_field_by_field(
    running: Running, request_: backend_pb2.ReportStatusRequest, field: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.stub.ReportStatus(request_, timeout=5)
    d = details_of(refused.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert field in d.violations
    assert "\u202e" not in d.violations[field] and "forged" not in d.violations[field]  # never the value
    assert running.worker.reports == []


async def test_unknown_cases_and_deliveries_are_not_found(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as no_case:
        await running.stub.ReportStatus(
            backend_pb2.ReportStatusRequest(case_no=new_case_no("440300"), status=11), timeout=5
        )
    assert (no_case.value.code(), details_of(no_case.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "CASE_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as no_delivery:
        await running.stub.AckDelivery(
            backend_pb2.AckDeliveryRequest(delivery_id=new_message_id()), timeout=5
        )
    assert details_of(no_delivery.value).reason == "DELIVERY_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await running.stub.AckDelivery(backend_pb2.AckDeliveryRequest(delivery_id="x; DROP TABLE"), timeout=5)
    assert "delivery_id" in details_of(bad_id.value).violations


async def test_bad_watch_requests_are_refused(running: Running) -> None:
    for request, field in (
        (backend_pb2.WatchDeliveriesRequest(service_codes=["NO_SUCH_ITEM"]), "service_codes[0]"),
        (backend_pb2.WatchDeliveriesRequest(lease_seconds=3601), "lease_seconds"),
        (backend_pb2.WatchDeliveriesRequest(service_codes=[SERVICE] * 65), "service_codes"),
    ):
        call = running.stub.WatchDeliveries(request, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in details_of(refused.value).violations


async def test_undecodable_and_oversized_requests(running: Running) -> None:
    raw = running.channel.unary_unary(
        "/tongban.v1.CaseBackend/ReportStatus", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as garbage:
        await raw(b"\xff\xff\xff\xff", timeout=5)
    assert details_of(garbage.value).reason == "REQUEST_MALFORMED"
    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await running.stub.ReportStatus(
            backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=11, note="x" * MAX_REQUEST_BYTES),
            timeout=5,
        )
    assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.worker.reports == []


async def test_streams_end_when_the_api_stops(tmp_path: Path) -> None:
    api = BackendApi(api_config(tmp_path), secrets=region_keys(), catalogue=Catalogue.load())
    await api.start(RecordingCaseWorker().report_status)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        call = backend_pb2_grpc.CaseBackendStub(channel).WatchDeliveries(
            backend_pb2.WatchDeliveriesRequest(), timeout=30
        )
        await call.wait_for_connection()
        await api.stop()
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_mutual_tls_and_allowed_clients(tmp_path: Path) -> None:
    ca = certs.create_ca()
    d = tmp_path / "certs"
    certs.write(ca, d, "ca")
    certs.write(certs.issue_server(ca, ["127.0.0.1"]), d, "api")
    cfg = api_config(
        tmp_path,
        tls_cert=str(d / "api.crt"),
        tls_key=str(d / "api.key"),
        client_ca=str(d / "ca.crt"),
        allowed_clients=["wx-ywtb"],
    )
    cfg.gateway.dev_mode = False
    api = BackendApi(cfg, secrets=region_keys(), catalogue=Catalogue.load())
    worker = RecordingCaseWorker()
    await api.start(worker.report_status)
    request = backend_pb2.ReportStatusRequest(case_no=KNOWN_CASE, status=11)

    async def call(client: certs.Issued | None, server_ca: bytes = ca.cert_pem) -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(
            root_certificates=server_ca,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{api.port}", creds) as ch:
            try:
                await backend_pb2_grpc.CaseBackendStub(ch).ReportStatus(request, timeout=5)
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    try:
        assert await call(None) == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake
        stranger = certs.create_ca("another CA")
        assert await call(certs.issue_named_client(stranger, "wx-ywtb")) == grpc.StatusCode.UNAVAILABLE
        assert await call(certs.issue_named_client(ca, "somebody-else")) == grpc.StatusCode.PERMISSION_DENIED
        assert await call(certs.issue_named_client(ca, "wx-ywtb")) == grpc.StatusCode.OK
        assert len(worker.reports) == 1
    finally:
        await api.stop()
