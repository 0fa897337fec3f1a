"""市场监督管理局 (market regulation) demo store: the register of enterprises."""

from __future__ import annotations

import sqlite3
from typing import Any

from connectors.demo.seed import ENTERPRISES
from connectors.demo.store import SQLiteStore, one
from tongban.core.identifiers import mask_name


class EnterpriseRegistryStore(SQLiteStore):
    """市场监督管理局: the register of enterprises."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS mr_enterprise (
        uscc TEXT PRIMARY KEY, name TEXT NOT NULL, enterprise_type TEXT NOT NULL,
        legal_representative_id TEXT NOT NULL, legal_representative_name TEXT NOT NULL,
        registered_capital_wan INTEGER NOT NULL, established_on TEXT NOT NULL, region TEXT NOT NULL,
        authority TEXT NOT NULL, business_scope TEXT NOT NULL, status TEXT NOT NULL
    );
    """

    def seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO mr_enterprise VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ENTERPRISES
        )

    def enterprise(self, uscc: str) -> dict[str, Any]:
        """The register entry of an enterprise.

        Raises:
            NotFound: no enterprise with this code is registered here.
        """
        with self.transaction() as conn:
            row = one(conn, "SELECT * FROM mr_enterprise WHERE uscc = ?", uscc)
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
