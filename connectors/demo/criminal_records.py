"""公安局 (police) demo store: residents and the no-criminal-record certificates issued."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.demo.seed import RESIDENTS, WUXI
from connectors.demo.store import SQLiteStore, one


class CriminalRecordStore(SQLiteStore):
    """公安局: residents known to the Wuxi police and the no-criminal-record certificates issued."""

    SCHEMA = """
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

    def seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO ps_resident VALUES (?, ?, ?)", RESIDENTS)

    def certificate(self, id_no: str, *, certificate_use: str) -> dict[str, Any]:
        """无犯罪记录证明: issue a certificate when the person has no criminal record.

        Raises:
            NotFound: the person is not known to the Wuxi police.
        """
        issued_on = self._clock().isoformat()
        with self.transaction() as conn:
            row = one(conn, "SELECT * FROM ps_resident WHERE id_no = ?", id_no)
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
