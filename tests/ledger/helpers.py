"""Helpers of the ledger tests: drafts, and plain sqlite3 access that bypasses the ledger."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ledger import EntryDraft, Event

REGION = "440300"
PEER = "320200"


def make_draft(
    n: int, *, event: Event = Event.SUBMITTED, detail: str = "", time_ns: int | None = None
) -> EntryDraft:
    """A valid draft whose message id, digest and trace id are derived from ``n``."""
    return EntryDraft(
        event=event,
        message_id=f"msg-{n:04d}",
        peer_region=PEER,
        service_code="hukou.transfer",
        envelope_digest=hashlib.sha256(f"envelope {n}".encode()).digest(),
        trace_id=hashlib.md5(f"trace {n}".encode()).hexdigest(),
        detail=detail,
        time_ns=time_ns,
    )


@contextlib.contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain autocommit sqlite3 connection to a ledger file: what an attacker with file access has."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()
