"""CatalogueService: paging with opaque checked tokens, filters, search, bad input, authentication;
and a partner in another language calling it through server reflection, without the Python stubs."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry import trace

from gateway.catalogue_service import MAX_PAGE_SIZE, CatalogueService
from gateway.interceptors import GatewayInterceptor
from tests.conftest import SZ, WX, Stack
from tests.e2e.grpc_errors import details_of
from tongban.core.catalogue import Catalogue
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.privacy import Correlator
from tongban.core.registry import Registry, sign_registry
from tongban.ops.devstate import build_registry
from tongban.v1 import catalogue_pb2, catalogue_pb2_grpc, exchange_pb2

TOKEN = "szgov-ywtb:0123456789abcdef0123"
AUTH = (("authorization", "Bearer 0123456789abcdef0123"),)
CATEGORIES = ("社保", "医保", "公积金")


def big_catalogue(n: int = 250) -> Catalogue:
    """``n`` items cycling through three categories, modes and departments (code order = list order)."""
    msg = catalogue_pb2.Catalogue(version="test", revision=4)
    modes = (catalogue_pb2.HANDLING_MODE_QUERY, catalogue_pb2.HANDLING_MODE_FULLY_ONLINE)
    for i in range(n):
        msg.items.add(
            code=f"ITEM{i:08d}",
            name=f"{CATEGORIES[i % 3]}事项{i}",
            category=CATEGORIES[i % 3],
            handling_mode=modes[i % 2],
            applicant_kind=exchange_pb2.APPLICANT_KIND_PERSON,
            response_fields=["x"],
            share_attribute=exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL
            if i % 5 == 0
            else exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
            provider_department=f"部门{i % 4}",
        )
    return Catalogue.from_proto(msg)


def registry_for(catalogue: Catalogue) -> Registry:
    """SZ provides every item, WX the first ten."""
    regions = {r: (SigningKey.generate(r), SealingKey.generate(r)) for r in (SZ, WX)}
    doc = build_registry(regions, catalogue.codes(), version=1)
    for region in doc.regions:
        if region.code == WX:
            del region.provided_services[10:]
    root = Ed25519PrivateKey.generate()
    return Registry.from_signed(sign_registry(doc, root), [root.public_key()])


@dataclass
class Served:
    stub: catalogue_pb2_grpc.CatalogueServiceStub
    service: CatalogueService
    catalogue: Catalogue


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """CatalogueService behind the gateway's interceptor (dev mode with a token), on port 0."""
    catalogue = big_catalogue()
    service = CatalogueService(catalogue, registry_for(catalogue), Correlator(b"k" * 32))
    server = grpc.aio.server(
        interceptors=[
            GatewayInterceptor(
                region=SZ,
                dev_mode=True,
                dev_system_id="dev-partner",
                tracer=trace.get_tracer("test"),
                dev_tokens=[TOKEN],
            )
        ]
    )
    catalogue_pb2_grpc.add_CatalogueServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(catalogue_pb2_grpc.CatalogueServiceStub(channel), service, catalogue)
    finally:
        await channel.close()
        await server.stop(0)


async def list_all(
    stub: catalogue_pb2_grpc.CatalogueServiceStub, **filters: Any
) -> tuple[list[str], list[catalogue_pb2.ListServicesResponse]]:
    request = catalogue_pb2.ListServicesRequest(**filters)
    pages = []
    while True:
        page = await stub.ListServices(request, metadata=AUTH, timeout=5)
        pages.append(page)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return [i.code for p in pages for i in p.items], pages


async def refusal(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


async def test_pages_cover_every_item_once_in_catalogue_order(served: Served) -> None:
    codes, pages = await list_all(served.stub, page_size=40)
    assert codes == list(served.catalogue.codes())
    assert [len(p.items) for p in pages] == [40] * 6 + [10]
    assert {p.total_size for p in pages} == {250}
    assert {(p.catalogue_version, p.catalogue_revision) for p in pages} == {("test", 4)}


async def test_page_size_defaults_to_50_and_is_capped(served: Served) -> None:
    first = await served.stub.ListServices(catalogue_pb2.ListServicesRequest(), metadata=AUTH)
    assert len(first.items) == 50
    big = await served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_size=10_000), metadata=AUTH)
    assert len(big.items) == MAX_PAGE_SIZE


async def test_filters(served: Served) -> None:
    fund, _ = await list_all(served.stub, category="公积金")
    assert fund and all(served.catalogue.items[c].category == "公积金" for c in fund)
    assert len(fund) == len([i for i in served.catalogue if i.category == "公积金"])
    query, _ = await list_all(served.stub, handling_mode=catalogue_pb2.HANDLING_MODE_QUERY, page_size=7)
    assert query == [c for i, c in enumerate(served.catalogue.codes()) if i % 2 == 0]
    dept, _ = await list_all(
        served.stub, department="部门1", share_attribute=exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL
    )
    assert dept == [c for i, c in enumerate(served.catalogue.codes()) if i % 4 == 1 and i % 5 == 0]
    wuxi, _ = await list_all(served.stub, provider_region=WX)
    assert wuxi == list(served.catalogue.codes()[:10])
    nobody, pages = await list_all(served.stub, provider_region="370200")  # not in the registry
    assert nobody == [] and pages[0].total_size == 0


async def test_a_token_belongs_to_its_filters(served: Served) -> None:
    page = await served.stub.ListServices(
        catalogue_pb2.ListServicesRequest(page_size=5, category="医保"), metadata=AUTH
    )
    other = catalogue_pb2.ListServicesRequest(page_size=5, category="社保", page_token=page.next_page_token)
    d = await refusal(served.stub.ListServices(other, metadata=AUTH))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in d.violations


@pytest.mark.parametrize(
    "token",
    [
        "garbage!!",
        "x" * 5000,
        base64.urlsafe_b64encode(b"4.40." + b"0" * 32).decode(),  # well formed, forged MAC
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"4.-1.abc").decode(),
    ],
    ids=["not-base64", "huge", "forged", "not-ascii", "malformed"],
)
async def test_forged_or_garbage_tokens_are_invalid_argument(served: Served, token: str) -> None:
    d = await refusal(
        served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_token=token), metadata=AUTH)
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason == "INVALID_REQUEST"
    assert list(d.violations) == ["page_token"]


async def test_an_altered_offset_is_refused(served: Served) -> None:
    page = await served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_size=5), metadata=AUTH)
    text = base64.urlsafe_b64decode(page.next_page_token + "==").decode()
    revision, _, mac = text.split(".")
    altered = base64.urlsafe_b64encode(f"{revision}.100.{mac}".encode()).decode()
    d = await refusal(
        served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_token=altered), metadata=AUTH)
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_later_pages_come_from_the_revision_of_the_first(served: Served) -> None:
    page = await served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_size=100), metadata=AUTH)
    newer = served.catalogue.to_proto()
    newer.revision = 5
    del newer.items[:50]
    served.catalogue.adopt(Catalogue.from_proto(newer))
    rest = await served.stub.ListServices(
        catalogue_pb2.ListServicesRequest(page_size=100, page_token=page.next_page_token), metadata=AUTH
    )
    assert rest.catalogue_revision == 4 and rest.total_size == 250
    assert rest.items[0].code == "ITEM00000100"
    fresh = await served.stub.ListServices(catalogue_pb2.ListServicesRequest(page_size=100), metadata=AUTH)
    assert (fresh.catalogue_revision, fresh.total_size) == (5, 200)
    # Once the revision is no longer held, its tokens are refused.
    served.catalogue.keep_revisions = 1
    newest = served.catalogue.to_proto()
    newest.revision = 6
    served.catalogue.adopt(Catalogue.from_proto(newest))
    d = await refusal(
        served.stub.ListServices(
            catalogue_pb2.ListServicesRequest(page_size=100, page_token=page.next_page_token), metadata=AUTH
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "start again" in d.violations["page_token"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (catalogue_pb2.ListServicesRequest(department="部" * 200), "department"),
        (catalogue_pb2.ListServicesRequest(category="x" * 129), "category"),
        (catalogue_pb2.ListServicesRequest(provider_region="44030"), "provider_region"),
    ],
)
async def test_bad_filters(served: Served, request_: catalogue_pb2.ListServicesRequest, field: str) -> None:
    d = await refusal(served.stub.ListServices(request_, metadata=AUTH))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and field in d.violations


async def test_get_service(served: Served) -> None:
    answer = await served.stub.GetService(catalogue_pb2.GetServiceRequest(code="ITEM00000003"), metadata=AUTH)
    assert answer.item.code == "ITEM00000003" and answer.item.category == "社保"
    assert list(answer.provider_regions) == sorted([SZ, WX])
    answer = await served.stub.GetService(catalogue_pb2.GetServiceRequest(code="ITEM00000200"), metadata=AUTH)
    assert list(answer.provider_regions) == [SZ]
    d = await refusal(
        served.stub.GetService(catalogue_pb2.GetServiceRequest(code="ITEM99999999"), metadata=AUTH)
    )
    assert (d.code, d.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    d = await refusal(served.stub.GetService(catalogue_pb2.GetServiceRequest(code="../etc"), metadata=AUTH))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "code" in d.violations


async def test_search(served: Served) -> None:
    answer = await served.stub.SearchServices(
        catalogue_pb2.SearchServicesRequest(query="公积金", page_size=5), metadata=AUTH
    )
    assert len(answer.hits) == 5
    assert all(h.item.category == "公积金" for h in answer.hits)
    assert answer.catalogue_revision == 4
    default = await served.stub.SearchServices(
        catalogue_pb2.SearchServicesRequest(query="医保"), metadata=AUTH
    )
    assert len(default.hits) == 20
    capped = await served.stub.SearchServices(
        catalogue_pb2.SearchServicesRequest(query="医保", page_size=5000), metadata=AUTH
    )
    assert len(capped.hits) == len([i for i in served.catalogue if i.category == "医保"])  # under the cap
    for query in ("", "   ", "公" * 65):
        d = await refusal(
            served.stub.SearchServices(catalogue_pb2.SearchServicesRequest(query=query), metadata=AUTH)
        )
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "query" in d.violations


async def test_search_follows_an_adopted_revision(served: Served) -> None:
    newer = served.catalogue.to_proto()
    newer.revision = 9
    newer.items.add(
        code="NEWITEM00001",
        name="新生儿出生医学证明",
        category="出生",
        applicant_kind=exchange_pb2.APPLICANT_KIND_PERSON,
        response_fields=["x"],
    )
    before = await served.stub.SearchServices(
        catalogue_pb2.SearchServicesRequest(query="出生"), metadata=AUTH
    )
    assert not before.hits
    served.catalogue.adopt(Catalogue.from_proto(newer))
    after = await served.stub.SearchServices(catalogue_pb2.SearchServicesRequest(query="出生"), metadata=AUTH)
    assert [h.item.code for h in after.hits] == ["NEWITEM00001"] and after.catalogue_revision == 9


async def test_partner_authentication_applies(served: Served) -> None:
    d = await refusal(served.stub.ListServices(catalogue_pb2.ListServicesRequest()))
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    d = await refusal(
        served.stub.SearchServices(
            catalogue_pb2.SearchServicesRequest(query="x"), metadata=(("authorization", "Bearer nope"),)
        )
    )
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


# -- through server reflection, as grpcurl would -------------------------------------------------


def call_by_reflection(address: str) -> dict[str, Any]:
    """ListServices, GetService and SearchServices with request and response types learned from the
    gateway's reflection service alone (a pool of their own, no generated code): what grpcurl or a
    partner in another language does. Synchronous: run it off the event loop the gateway serves on."""
    out: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        reflection = ProtoReflectionDescriptorDatabase(channel)
        out["services"] = sorted(reflection.get_services())
        pool = descriptor_pool.DescriptorPool(reflection)
        service = pool.FindServiceByName("tongban.v1.CatalogueService")

        def call(method_name: str, body: dict[str, Any]) -> dict[str, Any]:
            method = service.methods_by_name[method_name]
            request_type = message_factory.GetMessageClass(method.input_type)
            response_type = message_factory.GetMessageClass(method.output_type)
            assert request_type is not catalogue_pb2.ListServicesRequest  # really dynamic
            rpc = channel.unary_unary(
                f"/{service.full_name}/{method.name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            request = json_format.ParseDict(body, request_type())
            answer: dict[str, Any] = json_format.MessageToDict(rpc(request, timeout=10))
            return answer

        out["list"] = call("ListServices", {"pageSize": 3, "providerRegion": WX})
        out["get"] = call("GetService", {"code": "ZFGJJTQ00001"})
        out["search"] = call("SearchServices", {"query": "公积金"})
    return out


async def test_catalogue_through_server_reflection(stack: Stack) -> None:
    found = await asyncio.to_thread(call_by_reflection, stack.nodes[SZ].address)
    assert "tongban.v1.CatalogueService" in found["services"]
    assert {"tongban.v1.Exchange", "tongban.v1.Ledger"} <= set(found["services"])
    listed = found["list"]
    assert len(listed["items"]) == 3 and listed["nextPageToken"]
    assert int(listed["totalSize"]) == len(Catalogue.load())
    got = found["get"]
    assert got["item"]["code"] == "ZFGJJTQ00001"
    assert got["item"]["fields"][0]["name"] == "withdrawal_reason"
    assert {SZ, WX} <= set(got["providerRegions"])  # from the live trust registry
    hits = [h["item"]["code"] for h in found["search"]["hits"]]
    assert set(hits[:2]) == {"ZFGJJTQ00001", "GJJDWKH00001"}
