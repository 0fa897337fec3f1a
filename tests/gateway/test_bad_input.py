"""Bad input is refused at the Shenzhen gateway: INVALID_ARGUMENT naming the field, nothing published,
nothing in any ledger but the gateway's REJECTED record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from ledger import Event
from tests.conftest import SZ, WX, Stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import build, cases, pension
from tests.helpers import eventually, note
from tongban.v1 import exchange_pb2

Edit = Callable[[exchange_pb2.QueryRequest], None]


def _id(value: str) -> Edit:
    def edit(q: exchange_pb2.QueryRequest) -> None:
        q.request.applicant.id_no = value

    return edit


def _set(attr: str, value: str) -> Edit:
    def edit(q: exchange_pb2.QueryRequest) -> None:
        setattr(q.request, attr, value)

    return edit


def _field(name: str, value: str | None) -> Edit:
    def edit(q: exchange_pb2.QueryRequest) -> None:
        if value is None:
            del q.request.fields[name]
        else:
            q.request.fields[name] = value

    return edit


def _name(value: str) -> Edit:
    def edit(q: exchange_pb2.QueryRequest) -> None:
        q.request.applicant.name = value

    return edit


def _enterprise_registry() -> exchange_pb2.QueryRequest:
    return build(next(c for c in cases() if c["service_code"] == "NZQYSLDJ0001"))


def _medical() -> exchange_pb2.QueryRequest:
    return build(next(c for c in cases() if c["service_code"] == "YDJYDJBA0001"))


def _enterprise(uscc: str) -> exchange_pb2.QueryRequest:
    q = build(next(c for c in cases() if c["service_code"] == "NZQYSLDJ0001"))
    q.request.applicant.id_no = uscc
    return q


BAD: list[tuple[str, Callable[[], exchange_pb2.QueryRequest], Edit | None, str]] = [
    ("id-check-character", pension, _id("320213198511200026"), "request.applicant.id_no"),
    ("impossible-birth-date", pension, _id("510107196602290883"), "request.applicant.id_no"),
    ("id-month-13", pension, _id("44030419901307123X"), "request.applicant.id_no"),
    ("bad-uscc", lambda: _enterprise("91350100M000100Y4A"), None, "request.applicant.id_no"),
    ("malformed-region-code", pension, _set("target_region", "999999"), "request.target_region"),
    ("region-not-in-registry", pension, _set("target_region", "110000"), "request.target_region"),
    ("unknown-service-code", pension, _set("service_code", "ZZZZ00000001"), "request.service_code"),
    (
        "missing-required-field",
        _medical,
        _field("treatment_region", None),
        "request.fields[treatment_region]",
    ),
    ("oversized-field", pension, _field("insurance_type", "1" * 10_000), "request.fields[insurance_type]"),
    ("bad-date", pension, _field("period_start", "2026-02-30"), "request.fields[period_start]"),
    ("unknown-field", pension, _field("favourite_colour", "blue"), "request.fields[favourite_colour]"),
    # Display spoofing and truncation in the receiving region's case system (tongban/core/text.py).
    ("nul-in-name", pension, _name("王\x00小明"), "request.applicant.name"),
    ("bidi-override-in-name", pension, _name("\u202e明小王"), "request.applicant.name"),
    (
        "bidi-override-in-form-field",
        _enterprise_registry,
        _field("branch_name", "分公司\u202egpj.exe"),
        "request.fields[branch_name]",
    ),
]


@pytest.fixture
async def spy(stack: Stack) -> Any:
    """Everything published under tb.v1.> anywhere in the topology reaches this subscriber."""
    seen: list[str] = []
    nc = await stack.nats(WX)

    async def record(msg: Any) -> None:
        seen.append(msg.subject)

    await nc.subscribe("tb.v1.>", cb=record)
    await nc.flush()
    yield seen
    await nc.close()


@pytest.mark.parametrize(("make", "edit", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_input_refused_and_nothing_published(
    stack: Stack, spy: list[str], make: Callable[[], exchange_pb2.QueryRequest], edit: Edit | None, field: str
) -> None:
    q = make()
    if edit:
        edit(q)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(q, timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason == "INVALID_REQUEST"
    assert field in d.violations, d.violations
    assert q.request.applicant.id_no not in d.message + "".join(d.violations.values())

    sz = await stack.nodes[SZ].ledger.entries()
    assert [e.event for e in sz] == [Event.REJECTED]
    assert note(sz[0]).startswith("INVALID_REQUEST")
    assert await stack.nodes[WX].ledger.size() == 0
    assert stack.nodes[WX].backend_calls() == 0

    # Control: the spy does see a valid request, so its silence above meant something.
    await stack.stub(SZ).Query(pension(), timeout=5)
    await eventually(
        lambda: any(s.startswith("tb.v1.rpc.320200.") for s in spy), what="spy saw the valid request"
    )
    assert [s for s in spy if s.startswith("tb.v1.rpc.")] == [f"tb.v1.rpc.{WX}.SBJFJLCX0001"]


async def test_all_violations_reported_together(stack: Stack) -> None:
    q = _medical()
    q.request.applicant.id_no = "320213198511200026"
    del q.request.fields["treatment_region"]
    q.request.fields["valid_from"] = "2026-13-01"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(q, timeout=5)
    assert set(details_of(exc.value).violations) == {
        "request.applicant.id_no",
        "request.fields[treatment_region]",
        "request.fields[valid_from]",
    }


async def test_field_names_of_the_caller_stay_out_of_the_ledger(stack: Stack) -> None:
    """Form field names the catalogue item does not declare are the caller's text (here a phone
    number and an ID number behind a letter, and 64-character names): the partner is told which
    name is wrong, the REJECTED entry says ``fields[?]``; as many as the catalogue lists (16 and a
    summary) still fit in one entry, which a record of every name would not."""
    q = pension()
    q.request.fields["p13800138000"] = "x"
    q.request.fields["i320213198511200025"] = "x"
    long_names = [f"z{i:02d}" + "q" * 61 for i in range(30)]
    for name in long_names:
        q.request.fields[name] = "x"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(q, timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.reason == "INVALID_REQUEST"
    assert "request.fields[p13800138000]" in d.violations  # the partner learns which name
    [entry] = await stack.nodes[SZ].ledger.entries()
    assert entry.event == Event.REJECTED
    text = note(entry)
    assert text == "INVALID_REQUEST: request.fields[?],request.fields", text  # and the summary
    for leaked in ("13800138000", "320213198511200025", "qqqq"):
        assert leaked not in entry.detail
