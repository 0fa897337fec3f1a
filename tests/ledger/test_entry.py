"""Entry drafts, the canonical encoding and the chain hash."""

from __future__ import annotations

import hashlib

import pytest

from ledger import Entry, EntryDraft, Event
from ledger.entry import MAX_DETAIL_CHARS, ZERO_HASH, canonical_bytes, chain_hash, seal

from .helpers import PEER, REGION, make_draft


def _entry(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "index": 7,
        "time_ns": 1_735_689_600_123_456_789,
        "region": REGION,
        "event": Event.REJECTED,
        "message_id": "01JH6Q3V5W",
        "peer_region": PEER,
        "service_code": "hukou.transfer",
        "envelope_digest": bytes(range(32)),
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "detail": '材料不全 "ID" \\ \n',
        "prev_hash": ZERO_HASH,
        "entry_hash": b"",
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


def test_canonical_bytes_golden() -> None:
    # Written by hand from the format in ledger/entry.py: keys sorted, no spaces, UTF-8 as is, JCS escapes.
    expected = (
        '{"detail":"材料不全 \\"ID\\" \\\\ \\n",'
        '"envelope_digest":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",'
        '"event":"REJECTED","index":7,"message_id":"01JH6Q3V5W","peer_region":"320200",'
        '"region":"440300","service_code":"hukou.transfer","time_ns":1735689600123456789,'
        '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","v":1}'
    ).encode()
    assert canonical_bytes(_entry()) == expected


def test_canonical_bytes_ignores_chain_fields() -> None:
    assert canonical_bytes(_entry(prev_hash=b"\x01" * 32, entry_hash=b"x")) == canonical_bytes(_entry())


@pytest.mark.parametrize(
    "field, value",
    [
        ("index", 8),
        ("time_ns", 1),
        ("region", "320200"),
        ("event", Event.RESPONDED),
        ("message_id", "other"),
        ("peer_region", "440600"),
        ("service_code", "other.service"),
        ("envelope_digest", b""),
        ("trace_id", ""),
        ("detail", ""),
    ],
)
def test_every_content_field_is_encoded(field: str, value: object) -> None:
    assert canonical_bytes(_entry(**{field: value})) != canonical_bytes(_entry())


def test_chain_hash_definition() -> None:
    prev = bytes(range(32))
    data = b'{"v":1}'
    assert chain_hash(prev, data) == hashlib.sha256(b"tongban.ledger.v1\x00" + prev + data).digest()


def test_chain_hash_rejects_short_prev_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        chain_hash(b"\x00" * 31, b"{}")


def test_seal_links_and_hashes() -> None:
    draft = make_draft(1, time_ns=42)
    first = seal(draft, index=0, region=REGION, prev_hash=ZERO_HASH)
    second = seal(make_draft(2, time_ns=43), index=1, region=REGION, prev_hash=first.entry_hash)
    assert first.prev_hash == ZERO_HASH
    assert first.entry_hash == chain_hash(ZERO_HASH, canonical_bytes(first))
    assert second.prev_hash == first.entry_hash
    assert (first.index, first.region, first.time_ns, first.message_id) == (0, REGION, 42, draft.message_id)


def test_seal_needs_a_time() -> None:
    with pytest.raises(ValueError, match="time_ns"):
        seal(make_draft(1), index=0, region=REGION, prev_hash=ZERO_HASH)


def test_event_values_equal_names() -> None:
    assert [e.value for e in Event] == [e.name for e in Event]
    assert len(Event) == 11


def test_draft_accepts_event_name() -> None:
    draft = EntryDraft("PUBLISHED", message_id="m", peer_region=PEER, service_code="s")  # type: ignore[arg-type]
    assert draft.event is Event.PUBLISHED


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"event": "DELIVERED"}, ValueError, "DELIVERED"),
        ({"message_id": ""}, ValueError, "message_id"),
        ({"message_id": 7}, TypeError, "message_id"),
        ({"envelope_digest": b"\x00" * 31}, ValueError, "envelope_digest"),
        ({"envelope_digest": "ab" * 32}, TypeError, "envelope_digest"),
        ({"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736"}, ValueError, "trace_id"),
        ({"trace_id": "4bf92f35"}, ValueError, "trace_id"),
        ({"trace_id": "0" * 32}, ValueError, "trace_id"),
        ({"detail": "x" * (MAX_DETAIL_CHARS + 1)}, ValueError, "detail"),
        ({"detail": "bad \ud800 surrogate"}, ValueError, "detail"),
        ({"time_ns": -1}, ValueError, "time_ns"),
        ({"time_ns": 2**63}, ValueError, "time_ns"),
        ({"time_ns": True}, TypeError, "time_ns"),
    ],
)
def test_draft_validation(overrides: dict[str, object], error: type[Exception], match: str) -> None:
    fields: dict[str, object] = {
        "event": Event.SUBMITTED,
        "message_id": "m",
        "peer_region": PEER,
        "service_code": "s",
    }
    fields.update(overrides)
    with pytest.raises(error, match=match):
        EntryDraft(**fields)  # type: ignore[arg-type]
