"""人力资源和社会保障局 (social insurance) demo store: insured persons, contributions, pensioners."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from typing import Any

from connectors.demo.seed import INSURANCE_TYPES, INSURED, PENSIONERS, RATES, WUXI, Insured, in_wuxi
from connectors.demo.store import NO_RECORD, SQLiteStore, one
from tongban.core.errors import NotFound

_PERSON = "SELECT * FROM si_person WHERE id_no = ?"


def _months(first: str, last: str) -> Iterator[str]:
    year, month = int(first[:4]), int(first[5:7])
    while f"{year:04d}-{month:02d}" <= last:
        yield f"{year:04d}-{month:02d}"
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _base(person: Insured, month: str) -> int:
    """Contribution base of a month: adjusted every July, rounded to whole yuan."""
    adjustments = (
        (int(month[:4]) - int(person.first_month[:4]))
        + (month[5:7] >= "07")
        - (person.first_month[5:7] >= "07")
    )
    return round(person.first_base * (1 + person.yearly_growth) ** adjustments)


class SocialInsuranceStore(SQLiteStore):
    """人力资源和社会保障局: insured persons, monthly contributions, pensioners."""

    SCHEMA = """
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

    def seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO si_person VALUES (?, ?, ?)",
            [(p.id_no, p.employer, p.status) for p in INSURED],
        )
        rows = [
            (p.id_no, kind, month, base, round(base * own, 2), round(base * unit, 2))
            for p in INSURED
            for month in _months(p.first_month, p.last_month)
            for base in (_base(p, month),)
            for kind, (own, unit) in RATES.items()
        ]
        conn.executemany("INSERT OR IGNORE INTO si_contribution VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT OR IGNORE INTO si_pensioner VALUES (?, ?, ?, ?)", PENSIONERS)

    def _contributions(self, id_no: str, insurance_type: str) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
        """The insured person and their monthly contributions of one type, oldest first.

        Raises:
            NotFound: the person is not insured here, or has no contribution of this type.
        """
        with self.transaction() as conn:
            person = one(conn, _PERSON, id_no)
            rows = conn.execute(
                "SELECT month, base, amount, unit_amount FROM si_contribution"
                " WHERE id_no = ? AND insurance_type = ? ORDER BY month",
                (id_no, insurance_type),
            ).fetchall()
        if not rows:
            raise NotFound(NO_RECORD)
        return person, rows

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
        person, rows = self._contributions(id_no, insurance_type)
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
        person, rows = self._contributions(id_no, "110")
        if person["status"] == "已退休":
            transferable, note = False, "已领取基本养老金，不办理转移接续"
        elif not in_wuxi(transfer_out_region):
            transferable, note = False, "转出地不属于本统筹区"
        elif in_wuxi(transfer_in_region):
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
        with self.transaction() as conn:
            return conn.execute("SELECT 1 FROM si_pensioner WHERE id_no = ?", (id_no,)).fetchone() is not None

    def qualification(self, id_no: str, *, certification_year: int) -> dict[str, Any]:
        """养老保险待遇领取资格认证: whether the person draws a pension and is certified for the year.

        Raises:
            NotFound: the person is not insured here.
        """
        with self.transaction() as conn:
            one(conn, _PERSON, id_no)
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
