"""Governance refusals (docs/domain.md, PIPL): 不予共享 data, conditional sharing without an approval,
consent without a valid consent reference, sensitive data without its basis.

Each is refused at the sending gateway (nothing published, one REJECTED entry) and again at the
providing region's connector for an envelope a broken or hostile gateway sent anyway (a signed
Problem, one REJECTED entry, no back-end call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import build, cases, pension
from tests.e2e.tamper import craft, send
from tests.helpers import note
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.v1 import exchange_pb2

PENSION = "SBJFJLCX0001"
SENSITIVE = next(item.code for item in Catalogue.load() if item.sensitive)


async def refused_at_gateway(stack: Stack, query: exchange_pb2.QueryRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub(SZ).Query(query, timeout=5)
    entries = await stack.nodes[SZ].ledger.entries()
    assert [e.event for e in entries] == [Event.REJECTED]
    assert stack.nodes[WX].backend_calls() == 0
    assert await stack.nodes[WX].ledger.size() == 0
    return err.value


async def refused_at_connector(stack: Stack, request: exchange_pb2.ServiceRequest, reason: str) -> str:
    """Send ``request`` to Wuxi as a gateway that skipped its checks; the Problem's message."""
    built = craft(stack, request=request)
    problem = await send(stack, built.data, service=request.service_code)
    assert problem.reason == reason, problem
    entries = await stack.nodes[WX].ledger.entries()
    assert [(e.event, note(e)) for e in entries] == [(Event.REJECTED, reason)]
    assert stack.nodes[WX].backend_calls() == 0
    return problem.message


def not_shared_catalogue() -> Catalogue:
    msg = Catalogue.load().to_proto()
    for item in msg.items:
        if item.code == PENSION:
            item.share_attribute = exchange_pb2.SHARE_ATTRIBUTE_NOT_SHARED
    return Catalogue.from_proto(msg)


@pytest.fixture
async def not_shared_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(topology, state, catalogue=not_shared_catalogue())
    try:
        yield s
    finally:
        await stop_stack(s)


async def test_not_shared_data_is_refused(not_shared_stack: Stack) -> None:
    err = await refused_at_gateway(not_shared_stack, pension())
    d = details_of(err)
    assert (d.code, d.reason) == (grpc.StatusCode.PERMISSION_DENIED, "DATA_NOT_SHARED")
    assert "不予共享" in d.message


async def test_not_shared_data_is_refused_by_the_provider_too(not_shared_stack: Stack) -> None:
    message = await refused_at_connector(not_shared_stack, pension().request, "DATA_NOT_SHARED")
    assert "不予共享" in message


def _consent_without_reference() -> exchange_pb2.QueryRequest:
    q = pension()
    q.request.governance.legal_basis = exchange_pb2.LEGAL_BASIS_CONSENT
    q.request.governance.consent_reference = ""
    return q


async def test_consent_missing_is_refused(stack: Stack) -> None:
    d = details_of(await refused_at_gateway(stack, _consent_without_reference()))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert d.violations == {
        "request.governance.consent_reference": (
            "Consent reference is required when the legal basis is consent."
        )
    }


async def test_consent_missing_is_refused_by_the_provider_too(stack: Stack) -> None:
    await refused_at_connector(stack, _consent_without_reference().request, "INVALID_REQUEST")


async def test_consent_reference_that_is_not_a_reference_is_refused(stack: Stack) -> None:
    q = _consent_without_reference()
    q.request.governance.consent_reference = "\u0000<script>"
    d = details_of(await refused_at_gateway(stack, q))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(d.violations) == ["request.governance.consent_reference"]
    assert "<script>" not in d.violations["request.governance.consent_reference"]


async def test_conditional_sharing_without_approval_is_refused(stack: Stack) -> None:
    q = pension()
    q.request.governance.approval_reference = ""
    d = details_of(await refused_at_gateway(stack, q))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert d.violations == {
        "request.governance.approval_reference": (
            "Approval reference is required: this service's data is shared on conditions (有条件共享)."
        )
    }


async def test_sensitive_data_without_its_basis_is_refused(stack: Stack) -> None:
    q = build(next(c for c in cases() if c["service_code"] == SENSITIVE))
    q.request.governance.legal_reference = ""
    q.request.governance.sensitive = False
    d = details_of(await refused_at_gateway(stack, q))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert set(d.violations) == {"request.governance.legal_reference", "request.governance.sensitive"}
