"""医疗保障局 (medical insurance) demo store: insured persons and cross-province treatment filings."""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any

from connectors.demo.seed import MEDICAL, WUXI, in_wuxi
from connectors.demo.store import SQLiteStore, one

_LONG_TERM_CATEGORIES = frozenset({"LONG_TERM_RESIDENT", "RESIDENT_WORKER"})
_TEMPORARY_FILING_DAYS = 180


class MedicalInsuranceStore(SQLiteStore):
    """医疗保障局: insured persons and cross-province medical treatment filings."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS mi_insured (
        id_no TEXT PRIMARY KEY, insurance_type_name TEXT NOT NULL, status TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS mi_filing (
        id INTEGER PRIMARY KEY AUTOINCREMENT, id_no TEXT NOT NULL, treatment_region TEXT NOT NULL,
        filing_category TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT,
        UNIQUE (id_no, treatment_region, filing_category, valid_from)
    );
    """

    def seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO mi_insured VALUES (?, ?, ?)", MEDICAL)

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
        with self.transaction() as conn:
            insured = one(conn, "SELECT * FROM mi_insured WHERE id_no = ?", id_no)
            answer["insurance_type_name"] = insured["insurance_type_name"]
            if not in_wuxi(insured_region):
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
