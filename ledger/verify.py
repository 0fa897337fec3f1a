"""Verification of a ledger's hash chain, recomputed from the entries' content alone.

The chain proves that no entry was edited, removed, inserted or reordered *before the head that was
checked*. It cannot show that entries were cut off the end, nor that the whole tail was rewritten and
re-hashed: that needs a head the region committed to earlier, which is what the signed Merkle tree heads
published to peers provide.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ledger import _sqlite
from ledger.entry import ZERO_HASH, Entry, canonical_bytes, chain_hash
from ledger.errors import ChainBroken, LedgerError


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of verifying a sequence of entries.

    Attributes:
        count: number of entries read, including any after the first bad one.
        ok: True when every entry verified.
        first_bad_index: position (expected index) of the first entry that did not verify, or None when ok.
        reason: why that entry did not verify, e.g. ``"entry hash mismatch"``; empty when ok.
        head_hash: ``entry_hash`` of the last entry of the verified prefix (the value the next entry must
            carry as ``prev_hash``); 32 zero bytes when that prefix is empty.
    """

    count: int
    ok: bool
    first_bad_index: int | None
    reason: str
    head_hash: bytes

    def raise_if_broken(self) -> None:
        """Raise when the chain did not verify.

        Raises:
            ChainBroken: with the first bad index and the reason.
        """
        if self.first_bad_index is not None:
            raise ChainBroken(index=self.first_bad_index, reason=self.reason)


class ChainCheck:
    """Incremental verifier: feed entries in log order, then take the report; stops at the first bad entry."""

    def __init__(self, region: str | None) -> None:
        self._region = region
        self._count = 0
        self._head = ZERO_HASH
        self._bad_index: int | None = None
        self._reason = ""

    def feed(self, entry: Entry) -> None:
        position = self._next()
        if position is None:
            return
        problem = self._problem(position, entry)
        if problem:
            self._fault(position, problem)
        else:
            self._head = entry.entry_hash

    def undecodable(self, why: str) -> None:
        """Count an entry that could not even be read; it is bad at its position."""
        position = self._next()
        if position is not None:
            self._fault(position, f"undecodable entry: {why}")

    def report(self) -> VerifyReport:
        return VerifyReport(
            count=self._count,
            ok=self._bad_index is None,
            first_bad_index=self._bad_index,
            reason=self._reason,
            head_hash=self._head,
        )

    def _next(self) -> int | None:
        """Count one entry; its position, or None once a fault was found (later entries are only counted)."""
        position = self._count
        self._count += 1
        return position if self._bad_index is None else None

    def _fault(self, position: int, reason: str) -> None:
        self._bad_index = position
        self._reason = reason

    def _problem(self, position: int, entry: Entry) -> str:
        if entry.index != position:
            kind = "index gap" if entry.index > position else "index out of order"
            return f"{kind}: expected {position}, found {entry.index}"
        if self._region is None:
            # Without an expected region, entry 0 sets it: one ledger never mixes regions.
            self._region = entry.region
        if entry.region != self._region:
            return f"region mismatch: expected {self._region}, found {entry.region}"
        if entry.prev_hash != self._head:
            if position == 0:
                return "prev_hash of entry 0 is not zero"
            return f"prev_hash does not match entry {position - 1}"
        try:
            expected = chain_hash(entry.prev_hash, canonical_bytes(entry))
        except (TypeError, ValueError, AttributeError) as exc:
            return f"undecodable entry: {exc}"
        if entry.entry_hash != expected:
            return "entry hash mismatch"
        return ""


def verify_entries(entries: Iterable[Entry], *, region: str | None = None) -> VerifyReport:
    """Verify a ledger from its first entry, recomputing every encoding and hash.

    Checks, per entry in order: its index continues 0, 1, 2, …; its region is ``region`` (or, when None, that
    of entry 0); its ``prev_hash`` is the previous ``entry_hash`` (zero for entry 0); its ``entry_hash`` is
    ``chain_hash(prev_hash, canonical_bytes(entry))``. Verification streams: ``entries`` may be a generator.

    Args:
        entries: the whole ledger from index 0, in index order.
        region: the region every entry must carry; None accepts the region of entry 0.

    Returns:
        The report; ``first_bad_index`` names the first failing position.
    """
    check = ChainCheck(region)
    for entry in entries:
        check.feed(entry)
    return check.report()


def verify_sqlite_file(path: str | os.PathLike[str], region: str | None = None) -> VerifyReport:
    """Verify a SQLite ledger file directly, read-only, without opening the async store.

    Safe while a gateway has the file open: it reads one consistent WAL snapshot, streaming rows by index.

    Args:
        path: the ledger file.
        region: the region the file must belong to; None takes it from the file's metadata.

    Returns:
        The report. A row whose values cannot be decoded (wrong type, not UTF-8, unknown event) is reported as
        the first bad index, like any other tampering.

    Raises:
        LedgerError: the file does not exist, is not a ledger, or belongs to another region.
    """
    file = Path(path)
    if not file.is_file():
        raise LedgerError(f"no ledger file at {file}")
    try:
        # mode=ro: verification must never create, migrate or repair the file it judges.
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger file {file}: {exc}") from exc
    try:
        # Bytes, decoded per column by entry_from_row, so a non-UTF-8 value is one bad entry, not a crash.
        conn.text_factory = bytes
        meta = _sqlite.read_meta(conn)
        if meta is None or "region" not in meta:
            raise LedgerError(f"{file} is not a tongban ledger (no ledger metadata)")
        if region is not None and meta["region"] != region:
            raise LedgerError(f"{file} is the ledger of region {meta['region']!r}, not {region!r}")
        check = ChainCheck(meta["region"])
        for row in conn.execute(f"{_sqlite.SELECT_ENTRIES} ORDER BY idx"):
            try:
                entry = _sqlite.entry_from_row(row)
            except ValueError as exc:
                check.undecodable(str(exc))
            else:
                check.feed(entry)
        return check.report()
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read ledger file {file}: {exc}") from exc
    finally:
        conn.close()
