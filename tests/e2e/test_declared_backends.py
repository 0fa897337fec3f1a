"""A region whose connector names only declared HTTP and SQL back ends (no Python) answers Query and
Submit, on real processes: ``make run``'s dev stack, whose Wuxi connector calls the demo REST services
(their own process) through the HTTP adapter and reads the enterprise register through the SQL adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format, struct_pb2

from connectors.adapters import AdapterRequest, adapter_request
from connectors.demo.backends import DemoBackend, demo_adapters
from tests.e2e.cases import submit_request, watch
from tests.e2e.requests import build, cases
from tongban.core.catalogue import Catalogue
from tongban.ops.dev import DevStack
from tongban.runtime.config import Config
from tongban.v1 import envelope_pb2, exchange_pb2, exchange_pb2_grpc

SZ, WX = "440300", "320200"
HTTP_CASE = "WFZJLZM00001"  # 无犯罪记录证明: a POST to the 公安 REST service
SQL_CASE = "NZQYSLDJ0001"  # 内资企业及分支机构设立登记: a SELECT on the enterprise register
CATALOGUE = Catalogue.load()


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevStack]:
    dev = DevStack(tmp_path_factory.mktemp("declared"), log_format="json")
    try:
        await dev.start()
        yield dev
    finally:
        await dev.stop()


async def _expected(db: Path, case: dict[str, Any]) -> dict[str, Any]:
    """What the in-process demo adapter answers to the same request on a fresh demo database, as
    the connector projects it (the declared fields, through a protobuf Struct)."""
    query = build(case)
    header = envelope_pb2.Header(message_id="01JEXPECTED0000000000000000", service_code=case["service_code"])
    request: AdapterRequest = adapter_request(header, query.request)
    answer = await demo_adapters(DemoBackend(db))[case["service_code"]].call(request)
    item = CATALOGUE.get(case["service_code"])
    assert item is not None
    declared = list(query.request.governance.declared_fields) or list(item.response_fields)
    struct = struct_pb2.Struct()
    struct.update({k: answer[k] for k in declared if k in answer})
    return json_format.MessageToDict(struct)


async def test_the_wuxi_connector_declares_only_http_and_sql_back_ends(stack: DevStack) -> None:
    assert stack.state is not None
    cfg = Config.load(stack.state.config_path(WX))
    assert cfg.connector.adapters == ""
    assert all(set(s) & {"python", "backend_api"} == set() for s in cfg.services.values())
    kinds = {code: cfg.backends[s["backend"]]["kind"] for code, s in cfg.services.items()}
    assert set(kinds.values()) == {"http", "sqlite"}
    assert kinds[HTTP_CASE] == "http" and kinds[SQL_CASE] == "sqlite"
    assert set(kinds) == {c["service_code"] for c in cases()}


async def test_every_declared_service_answers_a_query_as_the_demo_would(
    stack: DevStack, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[SZ]}") as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        for case in cases():  # in the same order on both databases: issued numbers line up
            resp = await stub.Query(build(case), timeout=15)
            assert resp.responder_region == WX
            want = await _expected(tmp_path / "expected.sqlite", case)
            assert want and json_format.MessageToDict(resp.data) == want, case["service_code"]


async def test_an_unknown_applicant_is_not_found_through_both_kinds(stack: DevStack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[SZ]}") as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        for code, unknown in (("SBJFJLCX0001", "110101199003078515"), (SQL_CASE, "91320213MA1XY0000H")):
            case = next(c for c in cases() if c["service_code"] == code)
            query = build(case)
            query.request.applicant.id_no = unknown
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Query(query, timeout=15)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, code


@pytest.mark.parametrize("service", [HTTP_CASE, SQL_CASE])
async def test_a_submit_through_a_declared_back_end_is_concluded(stack: DevStack, service: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[SZ]}") as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        accepted = await stub.Submit(submit_request(service, key=f"declared-{service}"), timeout=15)
        events = await watch(stub, accepted.case_no, timeout=30)
    statuses = [e.status for e in events]
    assert statuses == [
        exchange_pb2.CASE_STATUS_RECEIVED,
        exchange_pb2.CASE_STATUS_ACCEPTED,
        exchange_pb2.CASE_STATUS_APPROVED,
    ], statuses
