"""Fixtures of the ledger tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A fresh ledger file location; the file itself is created by the first open."""
    return tmp_path / "ledger.db"
