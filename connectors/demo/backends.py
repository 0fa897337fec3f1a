"""Demo back ends of the Wuxi (320200) side, in SQLite.

Each store creates and seeds its own tables (deterministically: the same file always holds the same
seed rows) and answers with plain JSON-like dicts. :class:`DemoBackend` puts them all in one SQLite
file, and :func:`demo_adapters` wires one :class:`~connectors.adapters.CallableAdapter` per catalogue
item; the SQLite work runs in a worker thread so the connector's event loop never blocks on it.

The seeded people are the DOMAIN.md example ID numbers plus a retired worker whose ID number carries the
old 崇安区 code 320202 (abolished in 2015, valid in ID numbers forever). The headline demo: a Shenzhen
window asks Wuxi for the pension contribution record of ``320213198511200025``.

:class:`FailingAdapter` and :class:`CountingAdapter` are small test utilities.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.adapters import (
    Adapter,
    AdapterFailure,
    AdapterRequest,
    CallableAdapter,
    CaseAdapter,
    Handler,
    StatusUpdate,
    submit_via_call,
)
from tongban.core.errors import NotFound
from tongban.core.identifiers import mask_name

__all__ = [
    "INSURANCE_TYPES",
    "SEEDED_ENTERPRISES",
    "SEEDED_PERSONS",
    "WUXI",
    "CountingAdapter",
    "CriminalRecordStore",
    "DemoBackend",
    "EnterpriseRegistryStore",
    "FailingAdapter",
    "HousingFundStore",
    "MedicalInsuranceStore",
    "SocialInsuranceStore",
    "demo_adapters",
]

#: GB/T 2260 code of the region these back ends belong to.
WUXI = "320200"

#: Social insurance types (险种类型, the national AAE140 codes) and their names.
INSURANCE_TYPES: Mapping[str, str] = {
    "110": "企业职工基本养老保险",
    "120": "机关事业单位基本养老保险",
    "170": "城乡居民基本养老保险",
    "210": "失业保险",
    "310": "职工基本医疗保险",
    "410": "工伤保险",
    "510": "生育保险",
}

# Personal and employer contribution rates of the seeded types.
_RATES: Mapping[str, tuple[float, float]] = {"110": (0.08, 0.16), "210": (0.005, 0.005), "310": (0.02, 0.07)}

_NO_RECORD = "no record for this applicant"
_WUXI_PREFIX = WUXI[:4]
_LONG_TERM_CATEGORIES = frozenset({"LONG_TERM_RESIDENT", "RESIDENT_WORKER"})
_TEMPORARY_FILING_DAYS = 180
_DEPOSIT_RATIO_RANGE = range(5, 13)


# The two seeded employers (also in the enterprise register below).
_ZHIHUI = "无锡梁溪智汇信息科技有限公司"
_JINGGONG = "无锡新吴精工机械有限公司"


@dataclass(frozen=True)
class _Insured:
    id_no: str
    employer: str
    first_month: str
    last_month: str
    first_base: int
    yearly_growth: float
    status: str


_INSURED = (
    _Insured("320213198511200025", _ZHIHUI, "2008-07", "2026-10", 2400, 0.08, "正常参保"),
    _Insured("44030419900307123X", _ZHIHUI, "2015-09", "2026-10", 4800, 0.06, "正常参保"),
    _Insured("370202200101010456", _JINGGONG, "2023-07", "2026-10", 4500, 0.05, "正常参保"),
    _Insured("320202195806150018", _JINGGONG, "1993-01", "2018-06", 240, 0.12, "已退休"),
)

#: ID numbers of the seeded people: every person item answers for each of them.
SEEDED_PERSONS: tuple[str, ...] = tuple(p.id_no for p in _INSURED)

# id_no, benefit start month, monthly pension, last certified on
_PENSIONERS = (("320202195806150018", "2018-07", 3856.40, "2026-03-18"),)

# id_no, insurance type name, status
_MEDICAL = (
    ("320213198511200025", "职工基本医疗保险", "正常参保"),
    ("44030419900307123X", "职工基本医疗保险", "正常参保"),
    ("370202200101010456", "职工基本医疗保险", "正常参保"),
    ("320202195806150018", "职工基本医疗保险", "退休人员参保"),
)

# id_no, account number, status, balance, monthly deposit (employee + employer), since, last month
_HOUSING_FUND = (
    ("320213198511200025", "320200100887123", "正常缴存", 98650.32, 2480.0, "2009-01", "2026-10"),
    ("44030419900307123X", "320200101526604", "正常缴存", 64210.50, 2160.0, "2015-10", "2026-10"),
    ("370202200101010456", "320200102361877", "正常缴存", 12380.00, 960.0, "2023-08", "2026-10"),
    ("320202195806150018", "320200100012958", "封存", 45120.88, 0.0, "1999-01", "2018-06"),
)

# id_no, household (户籍) region, has a criminal record
_RESIDENTS = (
    ("320213198511200025", "320213", 0),
    ("44030419900307123X", "440304", 0),
    ("370202200101010456", "370202", 0),
    ("320202195806150018", "320213", 0),
)

# uscc, name, type, legal representative id and name, capital (万元), established, region, authority,
# business scope, status
_ENTERPRISES = (
    (
        "91320213MA1MB7H225",
        _ZHIHUI,
        "有限责任公司（自然人投资或控股）",
        "44030419900307123X",
        "李强",
        500,
        "2016-05-18",
        "320213",
        "无锡市梁溪区市场监督管理局",
        "信息技术咨询服务；软件开发；信息系统集成服务",
        "存续",
    ),
    (
        "91320214135896270C",
        _JINGGONG,
        "有限责任公司",
        "320202195806150018",
        "陈建国",
        2000,
        "1998-04-09",
        "320214",
        "无锡市新吴区市场监督管理局",
        "通用机械零部件制造；金属切削加工",
        "存续",
    ),
)

#: Unified social credit codes of the seeded enterprises: every enterprise item answers for each.
SEEDED_ENTERPRISES: tuple[str, ...] = tuple(e[0] for e in _ENTERPRISES)

# uscc, unit account number, status, deposit ratio (%), employees, opened on
_HOUSING_FUND_UNITS = (("91320213MA1MB7H225", "3202000088172", "正常缴存", 12, 36, "2016-07-01"),)


def _months(first: str, last: str) -> Iterator[str]:
    year, month = int(first[:4]), int(first[5:7])
    while f"{year:04d}-{month:02d}" <= last:
        yield f"{year:04d}-{month:02d}"
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _month_count(first: str, last: str) -> int:
    return (int(last[:4]) - int(first[:4])) * 12 + int(last[5:7]) - int(first[5:7]) + 1


def _base(person: _Insured, month: str) -> int:
    """Contribution base of a month: adjusted every July, rounded to whole yuan."""
    adjustments = (
        (int(month[:4]) - int(person.first_month[:4]))
        + (month[5:7] >= "07")
        - (person.first_month[5:7] >= "07")
    )
    return round(person.first_base * (1 + person.yearly_growth) ** adjustments)


class _SQLiteStore:
    """A store owning some tables of a SQLite file; one connection per thread (thread-safe)."""

    _SCHEMA = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(self._SCHEMA)
            self._seed(conn)

    def _seed(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per worker thread, kept open: opening a SQLite connection per call costs more
        # than the query itself. WAL lets the threads read while one writes.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        with conn:  # one transaction: commit on success, roll back on error
            yield conn


class SocialInsuranceStore(_SQLiteStore):
    """人力资源和社会保障局: insured persons, monthly contributions, pensioners."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS si_person (
        id_no TEXT PRIMARY KEY, employer_name TEXT NOT NULL, status TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS si_contribution (
        id_no TEXT NOT NULL, insurance_type TEXT NOT NULL, month TEXT NOT NULL,
        base INTEGER NOT NULL, amount REAL NOT NULL, unit_amount REAL NOT NULL,
        PRIMARY KEY (id_no, insurance_type, month)
    );
    CREATE TABLE IF NOT EXISTS si_pensioner (
        id_no TEXT PRIMARY KEY, benefit_start_month TEXT NOT NULL, monthly_pension REAL NOT NULL,
        last_certified_on TEXT NOT NULL
    );
    """

    def _seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO si_person VALUES (?, ?, ?)",
            [(p.id_no, p.employer, p.status) for p in _INSURED],
        )
        rows = [
            (p.id_no, kind, month, base, round(base * own, 2), round(base * unit, 2))
            for p in _INSURED
            for month in _months(p.first_month, p.last_month)
            for base in (_base(p, month),)
            for kind, (own, unit) in _RATES.items()
        ]
        conn.executemany("INSERT OR IGNORE INTO si_contribution VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT OR IGNORE INTO si_pensioner VALUES (?, ?, ?, ?)", _PENSIONERS)

    def _person(self, conn: sqlite3.Connection, id_no: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM si_person WHERE id_no = ?", (id_no,)).fetchone()
        if row is None:
            raise NotFound(_NO_RECORD)
        return row

    def contribution_record(
        self, id_no: str, insurance_type: str, *, period_start: str = "", period_end: str = ""
    ) -> dict[str, Any]:
        """社会保险参保缴费记录查询: the record of one insurance type.

        Args:
            id_no: citizen ID number.
            insurance_type: AAE140 code, e.g. ``"110"``.
            period_start: first date (YYYY-MM-DD) of the monthly records to list.
            period_end: last date of the monthly records to list.

        Returns:
            The record summary plus the monthly records in the period (by default the last 12 months).

        Raises:
            NotFound: the person is not insured here, or not in this insurance type.
        """
        with self._connect() as conn:
            person = self._person(conn, id_no)
            rows = conn.execute(
                "SELECT month, base, amount, unit_amount FROM si_contribution"
                " WHERE id_no = ? AND insurance_type = ? ORDER BY month",
                (id_no, insurance_type),
            ).fetchall()
        if not rows:
            raise NotFound(_NO_RECORD)
        start = (
            period_start[:7]
            if period_start
            else (rows[-12]["month"] if len(rows) >= 12 else rows[0]["month"])
        )
        end = period_end[:7] if period_end else rows[-1]["month"]
        return {
            "insured_region": WUXI,
            "insurance_type": insurance_type,
            "insurance_type_name": INSURANCE_TYPES.get(insurance_type, ""),
            "status": person["status"],
            "employer_name": person["employer_name"],
            "first_month": rows[0]["month"],
            "last_month": rows[-1]["month"],
            "total_months": len(rows),
            "records": [
                {
                    "month": r["month"],
                    "base": r["base"],
                    "amount": r["amount"],
                    "unit_amount": r["unit_amount"],
                }
                for r in rows
                if start <= r["month"] <= end
            ],
        }

    def transfer_check(
        self, id_no: str, *, transfer_out_region: str, transfer_in_region: str
    ) -> dict[str, Any]:
        """企业职工基本养老保险关系转移接续: what would transfer out of Wuxi, and whether it can.

        The pooled fund transfers 12% of the contribution bases since 1998 (国办发〔2009〕66号).

        Raises:
            NotFound: the person has no pension record here.
        """
        with self._connect() as conn:
            person = self._person(conn, id_no)
            rows = conn.execute(
                "SELECT month, base, amount FROM si_contribution"
                " WHERE id_no = ? AND insurance_type = '110' ORDER BY month",
                (id_no,),
            ).fetchall()
        if not rows:
            raise NotFound(_NO_RECORD)
        if person["status"] == "已退休":
            transferable, note = False, "已领取基本养老金，不办理转移接续"
        elif not transfer_out_region.startswith(_WUXI_PREFIX):
            transferable, note = False, "转出地不属于本统筹区"
        elif transfer_in_region.startswith(_WUXI_PREFIX):
            transferable, note = False, "转入地与转出地属于同一统筹区"
        else:
            transferable, note = True, "可办理转移接续"
        return {
            "transfer_out_region": WUXI,
            "insured_since": rows[0]["month"],
            "last_month": rows[-1]["month"],
            "total_months": len(rows),
            "individual_account_balance": round(sum(r["amount"] for r in rows), 2),
            "pooling_fund_transfer_amount": round(
                sum(r["base"] for r in rows if r["month"] >= "1998-01") * 0.12, 2
            ),
            "pension_status": person["status"],
            "transferable": transferable,
            "check_note": note,
        }

    def is_pensioner(self, id_no: str) -> bool:
        """Whether the person draws a pension here."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM si_pensioner WHERE id_no = ?", (id_no,)).fetchone() is not None

    def qualification(self, id_no: str, *, certification_year: int) -> dict[str, Any]:
        """养老保险待遇领取资格认证: whether the person draws a pension and is certified for the year.

        Raises:
            NotFound: the person is not insured here.
        """
        with self._connect() as conn:
            self._person(conn, id_no)
            row = conn.execute("SELECT * FROM si_pensioner WHERE id_no = ?", (id_no,)).fetchone()
        if row is None:
            return {
                "receiving_pension": False,
                "pension_region": WUXI,
                "benefit_start_month": None,
                "certification_year": certification_year,
                "certification_status": "不适用",
                "last_certified_on": None,
                "next_due_on": None,
            }
        last = datetime.date.fromisoformat(row["last_certified_on"])
        return {
            "receiving_pension": True,
            "pension_region": WUXI,
            "benefit_start_month": row["benefit_start_month"],
            "certification_year": certification_year,
            "certification_status": "已认证" if last.year >= certification_year else "待认证",
            "last_certified_on": last.isoformat(),
            # Certification is valid for twelve months.
            "next_due_on": last.replace(year=last.year + 1).isoformat(),
        }


class MedicalInsuranceStore(_SQLiteStore):
    """医疗保障局: insured persons and cross-province medical treatment filings."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS mi_insured (
        id_no TEXT PRIMARY KEY, insurance_type_name TEXT NOT NULL, status TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS mi_filing (
        id INTEGER PRIMARY KEY AUTOINCREMENT, id_no TEXT NOT NULL, treatment_region TEXT NOT NULL,
        filing_category TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT,
        UNIQUE (id_no, treatment_region, filing_category, valid_from)
    );
    """

    def _seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO mi_insured VALUES (?, ?, ?)", _MEDICAL)

    def file(
        self,
        id_no: str,
        *,
        insured_region: str,
        treatment_region: str,
        filing_category: str,
        valid_from: str,
        valid_until: str = "",
    ) -> dict[str, Any]:
        """跨省异地就医登记备案: record a filing (the same filing twice gives the same number).

        Raises:
            NotFound: the person has no medical insurance here.
        """
        answer: dict[str, Any] = {
            "filing_number": None,
            "filing_status": "未备案",
            "insured_region": WUXI,
            "insurance_type_name": "",
            "treatment_region": treatment_region,
            "filing_category": filing_category,
            "valid_from": valid_from,
            "valid_until": valid_until or None,
            "check_note": "",
        }
        with self._connect() as conn:
            insured = conn.execute("SELECT * FROM mi_insured WHERE id_no = ?", (id_no,)).fetchone()
            if insured is None:
                raise NotFound(_NO_RECORD)
            answer["insurance_type_name"] = insured["insurance_type_name"]
            if not insured_region.startswith(_WUXI_PREFIX):
                answer["check_note"] = "参保地不属于本统筹区"
                return answer
            if treatment_region[:2] == insured_region[:2]:
                answer["check_note"] = "就医地与参保地在同一省份，不属于跨省异地就医"
                return answer
            if not valid_until and filing_category not in _LONG_TERM_CATEGORIES:
                start = datetime.date.fromisoformat(valid_from)
                valid_until = (start + datetime.timedelta(days=_TEMPORARY_FILING_DAYS)).isoformat()
            if valid_until and valid_until < valid_from:
                answer["check_note"] = "备案截止日期早于开始日期"
                return answer
            conn.execute(
                "INSERT OR IGNORE INTO mi_filing"
                " (id_no, treatment_region, filing_category, valid_from, valid_until) VALUES (?, ?, ?, ?, ?)",
                (id_no, treatment_region, filing_category, valid_from, valid_until or None),
            )
            row = conn.execute(
                "SELECT id, valid_until FROM mi_filing"
                " WHERE id_no = ? AND treatment_region = ? AND filing_category = ? AND valid_from = ?",
                (id_no, treatment_region, filing_category, valid_from),
            ).fetchone()
        answer.update(
            filing_number=f"YDBA{WUXI}{valid_from[:4]}{row['id']:06d}",
            filing_status="已备案",
            valid_until=row["valid_until"],
            check_note="备案成功" if row["valid_until"] else "备案成功，长期有效",
        )
        return answer


class HousingFundStore(_SQLiteStore):
    """住房公积金管理中心: personal accounts and employer (unit) accounts."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS hf_account (
        id_no TEXT PRIMARY KEY, account_no TEXT NOT NULL, status TEXT NOT NULL, balance REAL NOT NULL,
        monthly_deposit REAL NOT NULL, deposit_since TEXT NOT NULL, last_deposit_month TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS hf_unit (
        uscc TEXT PRIMARY KEY, unit_account_no TEXT NOT NULL, status TEXT NOT NULL,
        deposit_ratio INTEGER NOT NULL, employee_count INTEGER NOT NULL, opened_on TEXT NOT NULL
    );
    """

    #: Name of the fund centre, as shown in answers.
    FUND_CENTRE = "无锡市住房公积金管理中心"

    def _seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO hf_account VALUES (?, ?, ?, ?, ?, ?, ?)", _HOUSING_FUND)
        conn.executemany("INSERT OR IGNORE INTO hf_unit VALUES (?, ?, ?, ?, ?, ?)", _HOUSING_FUND_UNITS)

    def withdrawal_check(
        self, id_no: str, *, reason: str, retired: bool, amount_requested: int | None = None
    ) -> dict[str, Any]:
        """住房公积金提取: whether the account may be drawn on for this reason, and how much.

        Args:
            id_no: citizen ID number.
            reason: ``RETIREMENT`` or ``HOME_PURCHASE``.
            retired: whether the person draws a pension (shared by the social insurance side).
            amount_requested: the amount asked for, in yuan.

        Raises:
            NotFound: the person has no account here.
        """
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM hf_account WHERE id_no = ?", (id_no,)).fetchone()
        if row is None:
            raise NotFound(_NO_RECORD)
        balance = row["balance"]
        if reason == "RETIREMENT":
            eligible = retired
            note = "退休销户提取，可提取全部余额" if retired else "未办理退休，不符合退休提取条件"
        elif row["status"] != "正常缴存":
            eligible, note = False, "账户未处于正常缴存状态"
        elif _month_count(row["deposit_since"], row["last_deposit_month"]) < 6:
            eligible, note = False, "连续缴存不足6个月"
        else:
            eligible, note = True, "符合购房提取条件"
        if not eligible:
            amount = 0.0
        elif reason == "RETIREMENT" or amount_requested is None:
            amount = balance
        else:
            amount = float(min(balance, amount_requested))
        return {
            "account_status": row["status"],
            "account_balance": balance,
            "monthly_deposit": row["monthly_deposit"],
            "deposit_since": row["deposit_since"],
            "last_deposit_month": row["last_deposit_month"],
            "withdrawal_reason": reason,
            "eligible": eligible,
            "withdrawable_amount": round(amount, 2),
            "check_note": note,
        }

    def unit_account(self, uscc: str) -> dict[str, Any] | None:
        """The employer's housing fund account, or None when it has none here."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM hf_unit WHERE uscc = ?", (uscc,)).fetchone()
        return None if row is None else dict(row)


class CriminalRecordStore(_SQLiteStore):
    """公安局: residents known to the Wuxi police and the no-criminal-record certificates issued."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS ps_resident (
        id_no TEXT PRIMARY KEY, household_region TEXT NOT NULL, has_record INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ps_certificate (
        id INTEGER PRIMARY KEY AUTOINCREMENT, id_no TEXT NOT NULL, certificate_use TEXT NOT NULL,
        issued_on TEXT NOT NULL
    );
    """

    #: Issuing authority, as shown in answers.
    AUTHORITY = "无锡市公安局"

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime.date] = datetime.date.today) -> None:
        self._clock = clock
        super().__init__(path)

    def _seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO ps_resident VALUES (?, ?, ?)", _RESIDENTS)

    def certificate(self, id_no: str, *, certificate_use: str) -> dict[str, Any]:
        """无犯罪记录证明: issue a certificate when the person has no criminal record.

        Raises:
            NotFound: the person is not known to the Wuxi police.
        """
        issued_on = self._clock().isoformat()
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM ps_resident WHERE id_no = ?", (id_no,)).fetchone()
            if row is None:
                raise NotFound(_NO_RECORD)
            if row["has_record"]:
                number, issued = None, None
            else:
                cur = conn.execute(
                    "INSERT INTO ps_certificate (id_no, certificate_use, issued_on) VALUES (?, ?, ?)",
                    (id_no, certificate_use, issued_on),
                )
                number, issued = f"WFZ{WUXI}{issued_on[:4]}{cur.lastrowid:06d}", issued_on
        return {
            "has_criminal_record": bool(row["has_record"]),
            "certificate_number": number,
            "issuing_authority": self.AUTHORITY,
            "issued_on": issued,
            "certificate_use": certificate_use,
        }


class EnterpriseRegistryStore(_SQLiteStore):
    """市场监督管理局: the register of enterprises."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS mr_enterprise (
        uscc TEXT PRIMARY KEY, name TEXT NOT NULL, enterprise_type TEXT NOT NULL,
        legal_representative_id TEXT NOT NULL, legal_representative_name TEXT NOT NULL,
        registered_capital_wan INTEGER NOT NULL, established_on TEXT NOT NULL, region TEXT NOT NULL,
        authority TEXT NOT NULL, business_scope TEXT NOT NULL, status TEXT NOT NULL
    );
    """

    def _seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO mr_enterprise VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _ENTERPRISES
        )

    def enterprise(self, uscc: str) -> dict[str, Any]:
        """The register entry of an enterprise.

        Raises:
            NotFound: no enterprise with this code is registered here.
        """
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM mr_enterprise WHERE uscc = ?", (uscc,)).fetchone()
        if row is None:
            raise NotFound(_NO_RECORD)
        return dict(row)

    def registration_check(
        self, uscc: str, *, enterprise_name: str, legal_representative_id: str = ""
    ) -> dict[str, Any]:
        """内资企业及分支机构设立登记: the parent enterprise's registration, checked against the form.

        Raises:
            NotFound: no enterprise with this code is registered here.
        """
        entry = self.enterprise(uscc)
        return {
            "registration_status": entry["status"],
            "enterprise_name": entry["name"],
            "name_matches": enterprise_name == entry["name"],
            "enterprise_type": entry["enterprise_type"],
            "legal_representative_masked": mask_name(entry["legal_representative_name"]),
            "legal_representative_matches": (
                legal_representative_id.upper() == entry["legal_representative_id"]
                if legal_representative_id
                else None
            ),
            "registered_capital_wan": entry["registered_capital_wan"],
            "established_on": entry["established_on"],
            "registered_region": entry["region"],
            "registration_authority": entry["authority"],
            "business_scope": entry["business_scope"],
        }


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
            "deposit_ratio_allowed": deposit_ratio in _DEPOSIT_RATIO_RANGE,
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
    from connectors.demo.cases import DemoCaseAdapter
    from tongban.core.catalogue import Catalogue
    from tongban.v1 import catalogue_pb2

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


class FailingAdapter:
    """Test utility: a back end that is always down (raises :class:`AdapterFailure`)."""

    def __init__(self, message: str = "demo back end is unavailable") -> None:
        self.message = message

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        raise AdapterFailure(self.message)


class CountingAdapter:
    """Test utility: wraps an adapter and counts its calls per message id.

    Attributes:
        inner: the wrapped adapter.
        calls: number of calls per message id.
    """

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All calls so far."""
        return sum(self.calls.values())

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        self.calls[request.message_id] += 1
        return await self.inner.call(request)

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        """Counted once per Submit reaching the back end (whatever the inner adapter does)."""
        self.calls[request.message_id] += 1
        if isinstance(self.inner, CaseAdapter):
            return await self.inner.submit_case(request)
        return await submit_via_call(self.inner, request)
