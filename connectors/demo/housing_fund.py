"""住房公积金管理中心 (housing fund) demo store: personal and employer (unit) accounts."""

from __future__ import annotations

import sqlite3
from typing import Any

from connectors.demo.seed import HOUSING_FUND, HOUSING_FUND_UNITS
from connectors.demo.store import SQLiteStore, one


def _month_count(first: str, last: str) -> int:
    return (int(last[:4]) - int(first[:4])) * 12 + int(last[5:7]) - int(first[5:7]) + 1


class HousingFundStore(SQLiteStore):
    """住房公积金管理中心: personal accounts and employer (unit) accounts."""

    SCHEMA = """
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

    #: Deposit ratios (%) an employer may choose.
    DEPOSIT_RATIOS = range(5, 13)

    def seed(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO hf_account VALUES (?, ?, ?, ?, ?, ?, ?)", HOUSING_FUND)
        conn.executemany("INSERT OR IGNORE INTO hf_unit VALUES (?, ?, ?, ?, ?, ?)", HOUSING_FUND_UNITS)

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
        with self.transaction() as conn:
            row = one(conn, "SELECT * FROM hf_account WHERE id_no = ?", id_no)
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
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM hf_unit WHERE uscc = ?", (uscc,)).fetchone()
        return None if row is None else dict(row)
