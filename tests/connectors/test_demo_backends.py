"""The Wuxi demo back ends behind the adapters, on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from connectors.adapters import Adapter, AdapterFailure, AdapterRequest
from connectors.demo.backends import DemoBackend, demo_adapters
from connectors.demo.seed import SEEDED_ENTERPRISES, SEEDED_PERSONS
from tests.adapters import CountingAdapter, FailingAdapter
from tongban.core.catalogue import Catalogue
from tongban.core.errors import NotFound
from tongban.v1 import exchange_pb2

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "catalogue_requests.json").read_text(encoding="utf-8")
)
BY_CODE = {v["service_code"]: v for v in VECTORS}
TODAY = datetime.date(2026, 11, 22)
UNKNOWN = {"person": "110105198001010032", "enterprise": "91440300MA5G2K7P5H"}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


@pytest.fixture
def backend(tmp_path: Path) -> DemoBackend:
    return DemoBackend(tmp_path / "wuxi.db", clock=lambda: TODAY)


@pytest.fixture
def adapters(backend: DemoBackend) -> dict[str, Adapter]:
    return demo_adapters(backend)


def adapter_request(
    vector: dict[str, Any],
    *,
    applicant_id: str | None = None,
    message_id: str = "01JDEMO0000000000000000001",
    **fields: str,
) -> AdapterRequest:
    return AdapterRequest(
        message_id=message_id,
        service_code=vector["service_code"],
        requester_region="440300",
        applicant_kind=vector["applicant"]["kind"],
        applicant_id=applicant_id or vector["applicant"]["id_no"],
        applicant_name="",
        fields={**vector["fields"], **fields},
    )


def seeded(kind: str) -> tuple[str, ...]:
    return SEEDED_PERSONS if kind == "person" else SEEDED_ENTERPRISES


def test_an_adapter_for_every_vector_item(catalogue: Catalogue, adapters: dict[str, Adapter]) -> None:
    # The demo back ends answer the 8 items of the vectors; the catalogue holds more.
    assert sorted(adapters) == sorted(BY_CODE)
    assert set(adapters) <= set(catalogue.codes())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["service_code"] for v in VECTORS])
async def test_vector_answer(
    catalogue: Catalogue, adapters: dict[str, Adapter], vector: dict[str, Any]
) -> None:
    item = catalogue.get(vector["service_code"])
    assert item is not None
    answer = await adapters[vector["service_code"]].call(adapter_request(vector))
    for key, value in vector["expect"].items():
        assert answer[key] == value, key
    # The answer speaks the catalogue's vocabulary and fits QueryResponse.data.
    assert set(answer) == set(item.response_fields)
    struct_pb2.Struct().update(answer)
    json.dumps(answer, ensure_ascii=False)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["service_code"] for v in VECTORS])
async def test_every_seeded_applicant_gets_an_answer(
    adapters: dict[str, Adapter], vector: dict[str, Any]
) -> None:
    for applicant_id in seeded(vector["applicant"]["kind"]):
        answer = await adapters[vector["service_code"]].call(
            adapter_request(vector, applicant_id=applicant_id)
        )
        assert answer


@pytest.mark.parametrize("vector", VECTORS, ids=[v["service_code"] for v in VECTORS])
async def test_unknown_applicant_is_not_found(adapters: dict[str, Adapter], vector: dict[str, Any]) -> None:
    unknown = UNKNOWN[vector["applicant"]["kind"]]
    with pytest.raises(NotFound) as caught:
        await adapters[vector["service_code"]].call(adapter_request(vector, applicant_id=unknown))
    assert unknown not in str(caught.value)
    assert caught.value.message == "no record for this applicant"


async def test_headline_pension_record(adapters: dict[str, Adapter]) -> None:
    vector = BY_CODE["SBJFJLCX0001"]
    answer = await adapters["SBJFJLCX0001"].call(adapter_request(vector))
    records = answer["records"]
    assert [r["month"] for r in records] == [f"2026-{m:02d}" for m in range(1, 11)]
    for record in records:
        assert record["amount"] == round(record["base"] * 0.08, 2)
    assert answer["insurance_type_name"] == "企业职工基本养老保险"

    # Without a period: the last twelve months.
    default = await adapters["SBJFJLCX0001"].call(adapter_request(vector, period_start="", period_end=""))
    assert default["records"][0]["month"] == "2025-11"
    assert len(default["records"]) == 12


async def test_pension_record_of_an_uninsured_type_is_not_found(adapters: dict[str, Adapter]) -> None:
    with pytest.raises(NotFound):
        await adapters["SBJFJLCX0001"].call(adapter_request(BY_CODE["SBJFJLCX0001"], insurance_type="410"))


async def test_retiree_cannot_transfer_but_is_certified(adapters: dict[str, Adapter]) -> None:
    retiree = "320202195806150018"
    transfer = await adapters["YLBXZYJX0001"].call(
        adapter_request(BY_CODE["YLBXZYJX0001"], applicant_id=retiree)
    )
    assert transfer["transferable"] is False
    young = await adapters["YLDYZGRZ0001"].call(
        adapter_request(BY_CODE["YLDYZGRZ0001"], applicant_id="370202200101010456")
    )
    assert young["receiving_pension"] is False
    due = await adapters["YLDYZGRZ0001"].call(
        adapter_request(BY_CODE["YLDYZGRZ0001"], certification_year="2027")
    )
    assert due["certification_status"] == "待认证"


async def test_medical_filing_is_idempotent_and_cross_province_only(adapters: dict[str, Adapter]) -> None:
    vector = BY_CODE["YDJYDJBA0001"]
    first = await adapters["YDJYDJBA0001"].call(adapter_request(vector))
    again = await adapters["YDJYDJBA0001"].call(adapter_request(vector))
    assert first["filing_number"] == again["filing_number"] is not None
    assert first["valid_until"] is None  # resident workers: long term
    temporary = await adapters["YDJYDJBA0001"].call(adapter_request(vector, filing_category="TEMPORARY"))
    assert temporary["valid_until"] == "2027-05-30"
    assert temporary["filing_number"] != first["filing_number"]
    same_province = await adapters["YDJYDJBA0001"].call(adapter_request(vector, treatment_region="320500"))
    assert same_province["filing_status"] == "未备案"
    assert same_province["filing_number"] is None


async def test_housing_fund_withdrawal_reasons(adapters: dict[str, Adapter]) -> None:
    vector = BY_CODE["ZFGJJTQ00001"]
    retire = await adapters["ZFGJJTQ00001"].call(
        adapter_request(vector, applicant_id="320202195806150018", withdrawal_reason="RETIREMENT")
    )
    assert retire["eligible"] is True
    assert retire["withdrawable_amount"] == retire["account_balance"]
    too_young = await adapters["ZFGJJTQ00001"].call(adapter_request(vector, withdrawal_reason="RETIREMENT"))
    assert too_young["eligible"] is False
    assert too_young["withdrawable_amount"] == 0


async def test_certificates_have_distinct_numbers(adapters: dict[str, Adapter]) -> None:
    vector = BY_CODE["WFZJLZM00001"]
    first, second = await asyncio.gather(
        adapters["WFZJLZM00001"].call(adapter_request(vector)),
        adapters["WFZJLZM00001"].call(adapter_request(vector, certificate_use="VISA")),
    )
    assert first["certificate_number"] != second["certificate_number"]
    assert first["issued_on"] == TODAY.isoformat()


async def test_enterprise_checks_compare_with_the_register(adapters: dict[str, Adapter]) -> None:
    vector = BY_CODE["NZQYSLDJ0001"]
    wrong = await adapters["NZQYSLDJ0001"].call(
        adapter_request(
            vector, enterprise_name="无锡梁溪智汇科技有限公司", legal_representative_id="320213198511200025"
        )
    )
    assert wrong["name_matches"] is False
    assert wrong["legal_representative_matches"] is False
    assert wrong["legal_representative_masked"] == "李*"
    opened = await adapters["GJJDWKH00001"].call(
        adapter_request(BY_CODE["GJJDWKH00001"], applicant_id="91320213MA1MB7H225", deposit_ratio="15")
    )
    assert opened["has_existing_account"] is True
    assert opened["deposit_ratio_allowed"] is False


def test_seeding_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    def dump(path: Path) -> list[Any]:
        with closing(sqlite3.connect(path)) as conn:
            tables = [
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            ]
            return [(t, sorted(conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables]

    DemoBackend(tmp_path / "a.db")
    DemoBackend(tmp_path / "a.db")
    DemoBackend(tmp_path / "b.db")
    assert dump(tmp_path / "a.db") == dump(tmp_path / "b.db")


async def test_failing_adapter() -> None:
    with pytest.raises(AdapterFailure):
        await FailingAdapter().call(adapter_request(VECTORS[0]))


async def test_counting_adapter_counts_per_message_id(adapters: dict[str, Adapter]) -> None:
    counting = CountingAdapter(adapters["SBJFJLCX0001"])
    vector = BY_CODE["SBJFJLCX0001"]
    await counting.call(adapter_request(vector, message_id="m-1"))
    await counting.call(adapter_request(vector, message_id="m-1"))
    await counting.call(adapter_request(vector, message_id="m-2"))
    assert counting.calls["m-1"] == 2
    assert counting.calls["m-2"] == 1
    assert counting.calls["m-3"] == 0
    assert counting.total == 3
    with pytest.raises(AdapterFailure):
        await CountingAdapter(FailingAdapter()).call(adapter_request(vector))


def test_vector_kinds_match_the_catalogue(catalogue: Catalogue) -> None:
    kinds = {
        exchange_pb2.APPLICANT_KIND_PERSON: "person",
        exchange_pb2.APPLICANT_KIND_ENTERPRISE: "enterprise",
    }
    for vector in VECTORS:
        item = catalogue.get(vector["service_code"])
        assert item is not None
        assert kinds[item.applicant_kind] == vector["applicant"]["kind"]
        assert vector["applicant"]["id_no"] in seeded(vector["applicant"]["kind"])
