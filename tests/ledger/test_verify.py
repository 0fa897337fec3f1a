"""Chain verification on in-memory entries (tamper tests through each store are in test_store.py)."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator

import pytest

from ledger import ChainBroken, Entry, LedgerError, verify_entries
from ledger.entry import ZERO_HASH, seal

from .helpers import REGION, make_draft


def _chain(n: int, region: str = REGION) -> list[Entry]:
    entries: list[Entry] = []
    prev = ZERO_HASH
    for i in range(n):
        entry = seal(make_draft(i, time_ns=1_000 + i), index=i, region=region, prev_hash=prev)
        entries.append(entry)
        prev = entry.entry_hash
    return entries


def test_valid_chain() -> None:
    entries = _chain(5)
    report = verify_entries(entries, region=REGION)
    assert report.ok
    assert (report.count, report.first_bad_index, report.reason) == (5, None, "")
    assert report.head_hash == entries[-1].entry_hash
    report.raise_if_broken()


def test_empty_chain() -> None:
    report = verify_entries([])
    assert report.ok and report.count == 0 and report.head_hash == ZERO_HASH


def test_streams_a_generator() -> None:
    def gen() -> Iterator[Entry]:
        yield from _chain(3)

    assert verify_entries(gen()).count == 3


def test_edited_entry() -> None:
    entries = _chain(5)
    entries[2] = dataclasses.replace(entries[2], detail="edited")
    report = verify_entries(entries)
    assert (report.ok, report.first_bad_index, report.reason) == (False, 2, "entry hash mismatch")
    assert report.count == 5
    assert report.head_hash == entries[1].entry_hash


def test_rehashed_edit_breaks_the_next_link() -> None:
    entries = _chain(5)
    edited = dataclasses.replace(entries[2], detail="edited")
    entries[2] = seal(
        make_draft(2, detail="edited", time_ns=edited.time_ns),
        index=2,
        region=REGION,
        prev_hash=entries[1].entry_hash,
    )
    report = verify_entries(entries)
    assert (report.first_bad_index, report.reason) == (3, "prev_hash does not match entry 2")


def test_gap_and_reorder() -> None:
    entries = _chain(5)
    gap = verify_entries(entries[:2] + entries[3:])
    assert (gap.first_bad_index, gap.reason) == (2, "index gap: expected 2, found 3")
    swapped = verify_entries([entries[0], entries[2], entries[1], *entries[3:]])
    assert (swapped.first_bad_index, swapped.reason) == (1, "index gap: expected 1, found 2")
    back = verify_entries([entries[0], entries[1], entries[1]])
    assert (back.first_bad_index, back.reason) == (2, "index out of order: expected 2, found 1")


def test_entry_zero_must_link_to_zero() -> None:
    entries = _chain(2)
    entries[0] = dataclasses.replace(entries[0], prev_hash=b"\x01" * 32)
    report = verify_entries(entries)
    assert (report.first_bad_index, report.reason) == (0, "prev_hash of entry 0 is not zero")


def test_region_checks() -> None:
    other = _chain(3, region="320200")
    report = verify_entries(other, region=REGION)
    assert (report.first_bad_index, report.reason) == (0, "region mismatch: expected 440300, found 320200")
    # Without an expected region, entry 0 fixes it for the rest.
    mixed = _chain(3)
    mixed[1] = dataclasses.replace(mixed[1], region="320200")
    report = verify_entries(mixed)
    assert (report.first_bad_index, report.reason) == (1, "region mismatch: expected 440300, found 320200")


def test_malformed_entry_is_reported_not_raised() -> None:
    entries = _chain(2)
    entries[1] = dataclasses.replace(entries[1], envelope_digest="not bytes")  # type: ignore[arg-type]
    report = verify_entries(entries)
    assert report.first_bad_index == 1 and report.reason.startswith("undecodable entry")


def test_raise_if_broken() -> None:
    entries = _chain(3)
    entries[1] = dataclasses.replace(entries[1], time_ns=0)
    with pytest.raises(ChainBroken) as caught:
        verify_entries(entries).raise_if_broken()
    assert (caught.value.index, caught.value.reason) == (1, "entry hash mismatch")
    assert isinstance(caught.value, LedgerError)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.index, copy.reason, str(copy)) == (1, "entry hash mismatch", str(caught.value))
