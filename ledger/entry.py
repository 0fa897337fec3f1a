"""Ledger entries and their encoding: what is recorded, the bytes that are hashed, and the hash chain.

An :class:`EntryDraft` is what a caller appends; the store turns it into an :class:`Entry` by giving it a
position (``index``), the ledger's region and a link to the previous entry (:func:`seal`).

Canonical encoding (version 1), produced by :func:`canonical_bytes`:

* a JSON object with exactly the keys ``v`` (always ``1``), ``index``, ``time_ns``, ``region``, ``event``,
  ``message_id``, ``peer_region``, ``service_code``, ``envelope_digest`` (lower-case hex, ``""`` when absent),
  ``trace_id`` and ``detail``;
* keys sorted, no whitespace (``","`` and ``":"`` separators), non-ASCII characters written as themselves
  (not ``\\u`` escapes), the whole text encoded as UTF-8;
* strings escaped as RFC 8785 (JCS) escapes them: only ``"``, ``\\`` and control characters, with the short
  forms ``\\b \\t \\n \\f \\r`` and lower-case ``\\u00xx`` otherwise (lone surrogates are refused upstream);
* ``index`` and ``time_ns`` as plain decimal integers, in full. ``time_ns`` exceeds 2**53, where JCS and any
  JSON library built on doubles would round: a verifier in another language must print it from a 64-bit
  integer.

These bytes are the Merkle leaf data of the tree added later (leaf hash = SHA-256(0x00 || canonical_bytes),
RFC 6962 §2.1); the hash chain below hashes the same bytes, so the two commitments cover exactly the same
fields. ``prev_hash`` and ``entry_hash`` are not part of the encoding: they are the chain, not the content.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Final, Protocol

ENCODING_VERSION: Final = 1
"""The ``"v"`` field of :func:`canonical_bytes`; bump it (and the chain domain) for any change of encoding."""

CHAIN_DOMAIN: Final = b"tongban.ledger.v1\x00"
"""Prefix of every chain hash input, so a chain hash can never be confused with another SHA-256 use."""

HASH_SIZE: Final = 32
ZERO_HASH: Final = bytes(HASH_SIZE)
"""The ``prev_hash`` of entry 0."""

MAX_DETAIL_CHARS: Final = 1024
"""``detail`` is a short note (a reject reason, an error class), never a payload: those hold personal data."""

MAX_TIME_NS: Final = 2**63 - 1
"""SQLite and PostgreSQL store ``time_ns`` as a signed 64-bit integer."""

_TRACE_ID = re.compile(r"[0-9a-f]{32}")


class Event(enum.StrEnum):
    """What happened to a message. Values equal names and are part of the encoding."""

    SUBMITTED = "SUBMITTED"
    PUBLISHED = "PUBLISHED"
    RECEIVED = "RECEIVED"
    PROCESSED = "PROCESSED"
    RESPONDED = "RESPONDED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    DEAD_LETTERED = "DEAD_LETTERED"
    STATUS = "STATUS"
    """A case status event, emitted (handling region) or received (submitting region)."""
    RESENT = "RESENT"
    """The reconciler re-sent a request it found neither forwarded nor in the outbound stream."""
    WITNESS_ALARM = "WITNESS_ALARM"
    """This region's witness saw another region's (``peer_region``) log fail to only grow: the detail names
    both checkpoint sizes and roots. ``message_id`` is ``witness-<region>-<held size>-<new size>``."""


@dataclass(frozen=True, slots=True)
class EntryDraft:
    """An entry as a caller appends it, before the ledger gives it a position and a link.

    Validated on construction, so a bad draft fails its own caller instead of the batch it would have joined.

    Attributes:
        event: what happened. A plain string naming an event is accepted and converted.
        message_id: the exchange message this entry is about; never empty.
        peer_region: the other region of the exchange (GB/T 2260 code).
        service_code: the catalogue service of the exchange.
        envelope_digest: SHA-256 of the signed envelope (32 bytes), or empty when there is none.
        trace_id: W3C trace id, 32 lower-case hex digits and not all zero, or empty when there is no trace.
        detail: a short note of at most :data:`MAX_DETAIL_CHARS` characters; never personal data.
        time_ns: when it happened, in nanoseconds since the Unix epoch; ``None`` means "now", set by
            ``append``.

    Raises:
        ValueError: a field is malformed.
        TypeError: a field has the wrong type.
    """

    event: Event
    message_id: str
    peer_region: str
    service_code: str
    envelope_digest: bytes = b""
    trace_id: str = ""
    detail: str = ""
    time_ns: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event):
            # Frozen dataclass: converting a str event in place needs object.__setattr__.
            object.__setattr__(self, "event", Event(self.event))
        for name in ("message_id", "peer_region", "service_code", "trace_id", "detail"):
            _check_text(name, getattr(self, name))
        if not self.message_id:
            raise ValueError("message_id must not be empty")
        if not isinstance(self.envelope_digest, bytes):
            raise TypeError(f"envelope_digest must be bytes, not {type(self.envelope_digest).__name__}")
        if len(self.envelope_digest) not in (0, HASH_SIZE):
            raise ValueError(
                f"envelope_digest must be empty or {HASH_SIZE} bytes, got {len(self.envelope_digest)}"
            )
        if self.trace_id and (not _TRACE_ID.fullmatch(self.trace_id) or self.trace_id == "0" * 32):
            # All-zero is the W3C "invalid" trace id (an unsampled, SDK-less span): pass "" for "no trace".
            raise ValueError("trace_id must be empty or 32 lower-case hex digits, not all zero")
        if len(self.detail) > MAX_DETAIL_CHARS:
            raise ValueError(f"detail is {len(self.detail)} characters, at most {MAX_DETAIL_CHARS} allowed")
        if self.time_ns is not None:
            if not isinstance(self.time_ns, int) or isinstance(self.time_ns, bool):
                raise TypeError(f"time_ns must be int or None, not {type(self.time_ns).__name__}")
            if not 0 <= self.time_ns <= MAX_TIME_NS:
                raise ValueError(f"time_ns out of range: {self.time_ns}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed ledger entry.

    Not validated on construction: verification must be able to represent (and then reject) whatever a
    tampered store holds.

    Attributes:
        index: 0-based position in the log.
        time_ns: when it happened, in nanoseconds since the Unix epoch.
        region: the region whose ledger holds the entry.
        event: see :class:`EntryDraft`.
        message_id: see :class:`EntryDraft`.
        peer_region: see :class:`EntryDraft`.
        service_code: see :class:`EntryDraft`.
        envelope_digest: see :class:`EntryDraft`.
        trace_id: see :class:`EntryDraft`.
        detail: see :class:`EntryDraft`.
        prev_hash: ``entry_hash`` of the previous entry; :data:`ZERO_HASH` for index 0.
        entry_hash: ``chain_hash(prev_hash, canonical_bytes(self))``.
    """

    index: int
    time_ns: int
    region: str
    event: Event
    message_id: str
    peer_region: str
    service_code: str
    envelope_digest: bytes
    trace_id: str
    detail: str
    prev_hash: bytes
    entry_hash: bytes


class EntryFields(Protocol):
    """The encoded fields of an entry; :class:`Entry` has them, and so may a store's own row type."""

    @property
    def index(self) -> int: ...
    @property
    def time_ns(self) -> int: ...
    @property
    def region(self) -> str: ...
    @property
    def event(self) -> Event: ...
    @property
    def message_id(self) -> str: ...
    @property
    def peer_region(self) -> str: ...
    @property
    def service_code(self) -> str: ...
    @property
    def envelope_digest(self) -> bytes: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def detail(self) -> str: ...


def canonical_bytes(fields: EntryFields) -> bytes:
    """Encode an entry's content deterministically (format in the module docstring).

    Args:
        fields: an :class:`Entry` or anything with the same content attributes.

    Returns:
        The UTF-8 bytes that the hash chain and the Merkle leaf commit to.
    """
    return _encode(
        index=fields.index,
        time_ns=fields.time_ns,
        region=fields.region,
        event=fields.event,
        message_id=fields.message_id,
        peer_region=fields.peer_region,
        service_code=fields.service_code,
        envelope_digest=fields.envelope_digest,
        trace_id=fields.trace_id,
        detail=fields.detail,
    )


def chain_hash(prev_hash: bytes, entry_bytes: bytes) -> bytes:
    """Link an entry to its predecessor: SHA-256(``CHAIN_DOMAIN`` || prev_hash || entry_bytes).

    ``prev_hash`` has a fixed length, so the concatenation is unambiguous without a separator.

    Args:
        prev_hash: ``entry_hash`` of the previous entry, or :data:`ZERO_HASH` for the first.
        entry_bytes: :func:`canonical_bytes` of the entry.

    Returns:
        The 32-byte ``entry_hash``.

    Raises:
        ValueError: ``prev_hash`` is not 32 bytes.
    """
    if len(prev_hash) != HASH_SIZE:
        raise ValueError(f"prev_hash must be {HASH_SIZE} bytes, got {len(prev_hash)}")
    return hashlib.sha256(CHAIN_DOMAIN + prev_hash + entry_bytes).digest()


def seal(draft: EntryDraft, *, index: int, region: str, prev_hash: bytes) -> Entry:
    """Turn a draft into the entry at ``index`` of ``region``'s ledger, chained after ``prev_hash``.

    Stores call this in log order; it does not touch any store.

    Args:
        draft: the draft; its ``time_ns`` must already be set.
        index: the entry's position.
        region: the ledger's region.
        prev_hash: ``entry_hash`` of entry ``index - 1``, or :data:`ZERO_HASH` for index 0.

    Returns:
        The entry with its ``entry_hash``.

    Raises:
        ValueError: ``draft.time_ns`` is None, or ``prev_hash`` is not 32 bytes.
    """
    if draft.time_ns is None:
        raise ValueError("draft.time_ns must be set before sealing")
    unsealed = Entry(
        index=index,
        time_ns=draft.time_ns,
        region=region,
        event=draft.event,
        message_id=draft.message_id,
        peer_region=draft.peer_region,
        service_code=draft.service_code,
        envelope_digest=draft.envelope_digest,
        trace_id=draft.trace_id,
        detail=draft.detail,
        prev_hash=prev_hash,
        entry_hash=b"",
    )
    return dataclasses.replace(unsealed, entry_hash=chain_hash(prev_hash, canonical_bytes(unsealed)))


def _encode(
    *,
    index: int,
    time_ns: int,
    region: str,
    event: Event,
    message_id: str,
    peer_region: str,
    service_code: str,
    envelope_digest: bytes,
    trace_id: str,
    detail: str,
) -> bytes:
    doc = {
        "v": ENCODING_VERSION,
        "index": index,
        "time_ns": time_ns,
        "region": region,
        # str() of a StrEnum member is its value; a plain str (from a tampered store) encodes the same way.
        "event": str(event),
        "message_id": message_id,
        "peer_region": peer_region,
        "service_code": service_code,
        "envelope_digest": envelope_digest.hex(),
        "trace_id": trace_id,
        "detail": detail,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate would only fail later, inside canonical_bytes, and take a whole batch down with it.
        raise ValueError(f"{name} is not valid Unicode text: {exc.reason}") from None
