"""The Wuxi (320200) demo back ends in one SQLite file, and one adapter per catalogue item on them.

Each store (one module each: :mod:`~connectors.demo.social_insurance`,
:mod:`~connectors.demo.medical_insurance`, :mod:`~connectors.demo.housing_fund`,
:mod:`~connectors.demo.criminal_records`, :mod:`~connectors.demo.enterprises`) creates and seeds its
own tables from :mod:`connectors.demo.seed` and answers with plain JSON-like dicts.
:class:`DemoBackend` puts them all in one SQLite file, and :func:`demo_adapters` wires one
:class:`~connectors.adapters.CallableAdapter` per catalogue item; the SQLite work runs in a worker
thread so the connector's event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from connectors.adapters import Adapter, AdapterRequest, CallableAdapter, Handler
from connectors.demo.cases import DemoCaseAdapter
from connectors.demo.criminal_records import CriminalRecordStore
from connectors.demo.enterprises import EnterpriseRegistryStore
from connectors.demo.housing_fund import HousingFundStore
from connectors.demo.medical_insurance import MedicalInsuranceStore
from connectors.demo.social_insurance import SocialInsuranceStore
from tongban.core.catalogue import Catalogue
from tongban.v1 import catalogue_pb2

__all__ = ["DemoBackend", "demo_adapters"]


class DemoBackend:
    """All Wuxi demo stores in one SQLite file.

    Attributes:
        path: the SQLite file.
        social_insurance: 人社 records.
        medical_insurance: 医保 records and filings.
        housing_fund: 公积金 accounts.
        criminal_records: 公安 residents and certificates.
        enterprises: 市场监管 register.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime.date] = datetime.date.today) -> None:
        self.path = Path(path)
        self.social_insurance = SocialInsuranceStore(self.path)
        self.medical_insurance = MedicalInsuranceStore(self.path)
        self.housing_fund = HousingFundStore(self.path)
        self.criminal_records = CriminalRecordStore(self.path, clock=clock)
        self.enterprises = EnterpriseRegistryStore(self.path)

    def housing_fund_unit_check(
        self, uscc: str, *, unit_name: str, deposit_ratio: int, employee_count: int | None
    ) -> dict[str, Any]:
        """住房公积金单位登记开户: registration and existing-account check for an employer.

        Raises:
            NotFound: no enterprise with this code is registered here.
        """
        entry = self.enterprises.enterprise(uscc)
        unit = self.housing_fund.unit_account(uscc)
        answer: dict[str, Any] = {
            "registration_status": entry["status"],
            "unit_name_matches": unit_name == entry["name"],
            "has_existing_account": unit is not None,
            "deposit_ratio_allowed": deposit_ratio in HousingFundStore.DEPOSIT_RATIOS,
            "fund_centre": HousingFundStore.FUND_CENTRE,
        }
        if unit is None:
            answer.update(
                unit_account_number=None,
                account_status="未开户",
                deposit_ratio_percent=deposit_ratio,
                employee_count=employee_count,
                opened_on=None,
            )
        else:
            answer.update(
                unit_account_number=unit["unit_account_no"],
                account_status=unit["status"],
                deposit_ratio_percent=unit["deposit_ratio"],
                employee_count=unit["employee_count"],
                opened_on=unit["opened_on"],
            )
        return answer


# --------------------------------------------------------------------------- adapters

_Answer = Callable[[DemoBackend, AdapterRequest], Mapping[str, Any]]


def _int_field(request: AdapterRequest, name: str) -> int | None:
    value = request.fields.get(name, "")
    return int(value) if value else None


def _answers() -> dict[str, _Answer]:
    def pension_record(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.social_insurance.contribution_record(
            r.applicant_id,
            r.fields.get("insurance_type") or "110",
            period_start=r.fields.get("period_start", ""),
            period_end=r.fields.get("period_end", ""),
        )

    def pension_transfer(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.social_insurance.transfer_check(
            r.applicant_id,
            transfer_out_region=r.fields["transfer_out_region"],
            transfer_in_region=r.fields["transfer_in_region"],
        )

    def pension_qualification(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        year = _int_field(r, "certification_year") or datetime.date.today().year
        return b.social_insurance.qualification(r.applicant_id, certification_year=year)

    def medical_filing(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.medical_insurance.file(
            r.applicant_id,
            insured_region=r.fields["insured_region"],
            treatment_region=r.fields["treatment_region"],
            filing_category=r.fields["filing_category"],
            valid_from=r.fields["valid_from"],
            valid_until=r.fields.get("valid_until", ""),
        )

    def fund_withdrawal(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.housing_fund.withdrawal_check(
            r.applicant_id,
            reason=r.fields["withdrawal_reason"],
            retired=b.social_insurance.is_pensioner(r.applicant_id),
            amount_requested=_int_field(r, "amount_requested"),
        )

    def no_criminal_record(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.criminal_records.certificate(r.applicant_id, certificate_use=r.fields["certificate_use"])

    def enterprise_registration(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.enterprises.registration_check(
            r.applicant_id.upper(),
            enterprise_name=r.fields["enterprise_name"],
            legal_representative_id=r.fields.get("legal_representative_id", ""),
        )

    def fund_unit_account(b: DemoBackend, r: AdapterRequest) -> Mapping[str, Any]:
        return b.housing_fund_unit_check(
            r.applicant_id.upper(),
            unit_name=r.fields["unit_name"],
            deposit_ratio=_int_field(r, "deposit_ratio") or 0,
            employee_count=_int_field(r, "employee_count"),
        )

    return {
        "SBJFJLCX0001": pension_record,  # 社会保险参保缴费记录查询
        "YLBXZYJX0001": pension_transfer,  # 企业职工基本养老保险关系转移接续
        "YLDYZGRZ0001": pension_qualification,  # 养老保险待遇领取资格认证
        "YDJYDJBA0001": medical_filing,  # 跨省异地就医登记备案
        "ZFGJJTQ00001": fund_withdrawal,  # 住房公积金提取
        "WFZJLZM00001": no_criminal_record,  # 无犯罪记录证明
        "NZQYSLDJ0001": enterprise_registration,  # 内资企业及分支机构设立登记
        "GJJDWKH00001": fund_unit_account,  # 住房公积金单位登记开户
    }


def _in_thread(backend: DemoBackend, answer: _Answer) -> Handler:
    async def handler(request: AdapterRequest) -> Mapping[str, Any]:
        return await asyncio.to_thread(answer, backend, request)

    return handler


def demo_adapters(backend: DemoBackend) -> dict[str, Adapter]:
    """One adapter per catalogue item code, answering from ``backend``.

    Args:
        backend: the demo stores.

    Returns:
        Adapters by item code. They raise :class:`~tongban.core.errors.NotFound` for an applicant the back
        end does not know.
    """
    catalogue = Catalogue.load()
    adapters: dict[str, Adapter] = {}
    for code, answer in _answers().items():
        adapter: Adapter = CallableAdapter(_in_thread(backend, answer))
        item = catalogue.get(code)
        if item is not None and item.handling_mode != catalogue_pb2.HANDLING_MODE_QUERY:
            # Case items also take Submits, recorded once per message in the same file.
            adapter = DemoCaseAdapter(adapter, backend.path)
        adapters[code] = adapter
    return adapters
