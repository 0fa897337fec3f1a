"""The chaos run at a size that fits the suite (``make chaos`` runs it with 5,000 Submits)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.chaos.harness import run_chaos


@pytest.mark.timeout(300)
async def test_chaos_every_accepted_submit_processed_exactly_once(tmp_path: Path) -> None:
    report = await run_chaos(tmp_path, submits=400, out=sys.stdout)
    assert len(report.chaos) == 6  # connector x3, gateway, Wuxi's nats-server, hub
    assert report.accepted == 400 and report.rejected == 0
    assert report.delivered == report.accepted
    assert report.duplicated == 0 and report.lost == 0
    assert report.ledgers_consistent, report.ledger_problems[:10]
