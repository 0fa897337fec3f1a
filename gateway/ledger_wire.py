"""The wire format of a region's ledger responder, ``tb.v1.lproof.<region>`` (core NATS, JSON, no
personal data): what the checkpoint publisher answers, and what the witness and the peer-read
client ask.

Three requests, each a small JSON object:

* ``{"old_size": m, "new_size": n}`` (:class:`ConsistencyRequest`): the reply is
  ``{"proof": [base64 hash, ...]}``;
* ``{"leaf_index": i, "tree_size": n}`` (:class:`InclusionRequest`): one entry with its inclusion
  proof, ``{"entry": {...}}`` as :func:`tongban.runtime.bundle.entry_json` encodes it;
* ``{"entries": {"message_id": "..."}}`` or ``{"entries": {"trace_id": "..."}}``
  (:class:`EntriesRequest`): ``{"entries": [entry, ...], "truncated": bool}`` with each entry's
  fields, ``prev_hash`` and ``entry_hash`` (:func:`entry_doc`), at most :data:`MAX_ENTRIES_PER_REPLY`
  of them and :data:`MAX_ENTRY_REPLY_BYTES` in all.

A request that cannot be served is answered ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger.entry import HASH_SIZE, Entry, Event
from tongban.core.message_ids import is_message_id, is_trace_id
from tongban.runtime.bundle import entry_json

MAX_REQUEST_BYTES: Final = 256
MAX_PROOF_REPLY_BYTES: Final = 16384
MAX_ENTRY_REPLY_BYTES: Final = 65536
MAX_ENTRIES_PER_REPLY: Final = 200
"""Entries in one answer to an entries request (a message has a dozen or so); beyond it, or beyond
:data:`MAX_ENTRY_REPLY_BYTES`, the answer holds the first ones and says ``truncated``."""
MAX_PROOF_HASHES: Final = 128
"""A consistency proof has at most about 2·log2(size) hashes: 126 for a tree of 2**63 leaves."""
_EMPTY_ENTRIES_REPLY: Final = b'{"entries":[],"truncated":false}'


def b64(data: bytes) -> str:
    """Standard base64 text: how hashes and roots travel here (and stand in logs and state files)."""
    return base64.b64encode(data).decode("ascii")


def json_object(data: bytes, *, limit: int, what: str) -> dict[str, Any]:
    """``data`` as one JSON object of at most ``limit`` bytes: every request and answer here is one.

    Raises:
        ValueError: too large, not JSON, or not an object (the message names ``what``).
    """
    if len(data) > limit:
        raise ValueError(f"{what} too large")
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """A consistency proof between two sizes of the responder's log (what a witness asks)."""

    old_size: int
    new_size: int


@dataclass(frozen=True, slots=True)
class InclusionRequest:
    """One entry with its inclusion proof in the tree of ``tree_size`` (what a receipt holder asks)."""

    leaf_index: int
    tree_size: int


@dataclass(frozen=True, slots=True)
class EntriesRequest:
    """The entries of one message or one trace (exactly one of the two set) about the asker's traffic."""

    message_id: str = ""
    trace_id: str = ""

    @property
    def selector(self) -> dict[str, str]:
        """The one selector, as it travels: ``{"message_id": ...}`` or ``{"trace_id": ...}``."""
        return {"message_id": self.message_id} if self.message_id else {"trace_id": self.trace_id}


LedgerRequest = ConsistencyRequest | InclusionRequest | EntriesRequest


def encode_request(request: LedgerRequest) -> bytes:
    """The request as it is sent."""
    if isinstance(request, EntriesRequest):
        return json.dumps({"entries": request.selector}).encode()
    return json.dumps(dataclasses.asdict(request)).encode()


def parse_request(data: bytes) -> LedgerRequest:
    """A request as the responder receives it.

    Raises:
        ValueError: not a request of any kind (the message is what the error reply says).
    """
    doc = json_object(data, limit=MAX_REQUEST_BYTES, what="request")
    if "entries" in doc:
        return _entries_request(doc)
    if "leaf_index" in doc:
        leaf, size = _integers(doc, "leaf_index", "tree_size", "leaf index and size must be integers")
        return InclusionRequest(leaf, size)
    old, new = _integers(doc, "old_size", "new_size", "sizes must be integers")
    return ConsistencyRequest(old, new)


def _entries_request(doc: dict[str, Any]) -> EntriesRequest:
    selector = doc["entries"]
    if set(doc) != {"entries"} or not isinstance(selector, dict) or len(selector) != 1:
        raise ValueError('request must be {"entries": {"message_id" or "trace_id": ...}}')
    [(key, value)] = selector.items()
    if key == "message_id" and isinstance(value, str) and is_message_id(value):
        return EntriesRequest(message_id=value)
    if key == "trace_id" and isinstance(value, str) and is_trace_id(value):
        return EntriesRequest(trace_id=value)
    raise ValueError("entries are selected by a well-formed message_id (ULID) or trace_id (32 hex digits)")


def _integers(doc: dict[str, Any], first: str, second: str, not_integers: str) -> tuple[int, int]:
    """The two integer fields that are all of ``doc`` (a JSON ``true`` is not an integer here)."""
    if set(doc) != {first, second}:
        raise ValueError(f"request must be {{{first}, {second}}}")
    a, b = doc[first], doc[second]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(not_integers)
    return a, b


def error_reply(why: str) -> bytes:
    """The answer to a request that cannot be served (at most 200 characters of why)."""
    return json.dumps({"error": why[:200]}).encode()


def proof_reply(proof: Sequence[bytes]) -> bytes:
    """The answer to a :class:`ConsistencyRequest`."""
    return json.dumps({"proof": [b64(h) for h in proof]}).encode()


def parse_proof_reply(data: bytes) -> list[bytes]:
    """The hashes of a :func:`proof_reply` (not yet verified: that needs two roots).

    Raises:
        ValueError: an error reply, or not a well-formed proof.
    """
    doc = json_object(data, limit=MAX_PROOF_REPLY_BYTES, what="proof reply")
    if "error" in doc:
        raise ValueError(f"origin refused: {str(doc['error'])[:200]}")
    hashes = doc.get("proof")
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        raise ValueError("proof reply has no proof list")
    proof = []
    for h in hashes:
        if not isinstance(h, str):
            raise ValueError("proof hash is not a string")
        try:
            raw = base64.b64decode(h, validate=True)
        except binascii.Error:
            raise ValueError("proof hash is not base64") from None
        if len(raw) != HASH_SIZE:
            raise ValueError(f"proof hash is not {HASH_SIZE} bytes")
        proof.append(raw)
    return proof


def inclusion_reply(entry: dict[str, Any]) -> bytes:
    """The answer to an :class:`InclusionRequest` (``entry`` as
    :func:`~tongban.runtime.bundle.entry_json` encodes it)."""
    return json.dumps({"entry": entry}).encode()


def entry_doc(e: Entry) -> dict[str, Any]:
    """An entry as :func:`tongban.runtime.bundle.entry_json` encodes it, with its chain link instead of an
    inclusion proof and without the canonical bytes (the asker re-encodes the fields and checks that
    they hash, with ``prev_hash``, to ``entry_hash``)."""
    doc = entry_json(e, ())
    del doc["inclusion_proof"], doc["entry_bytes"]
    doc["prev_hash"] = b64(e.prev_hash)
    doc["entry_hash"] = b64(e.entry_hash)
    return doc


def entries_reply(entries: Sequence[Entry]) -> tuple[bytes, int]:
    """The answer to an :class:`EntriesRequest`: the first of ``entries`` that fit, and how many."""
    parts: list[bytes] = []
    room = MAX_ENTRY_REPLY_BYTES - len(_EMPTY_ENTRIES_REPLY)
    for e in entries[:MAX_ENTRIES_PER_REPLY]:
        part = json.dumps(entry_doc(e), separators=(",", ":"), ensure_ascii=False).encode()
        if len(part) + 1 > room:
            break
        parts.append(part)
        room -= len(part) + 1
    truncated = b"true" if len(parts) < len(entries) else b"false"
    return b'{"entries":[' + b",".join(parts) + b'],"truncated":' + truncated + b"}", len(parts)


_ENTRY_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Entry))
"""The keys of an entry document: exactly the fields of :class:`Entry`."""


def entry_from_doc(raw: Any) -> Entry:
    """An :func:`entry_doc` back to an :class:`Entry`, every field of its exact JSON type (not yet
    checked against anything: the reader does that).

    Raises:
        KeyError, TypeError, ValueError: a field is missing or malformed.
    """
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    if set(raw) != _ENTRY_FIELDS:
        raise ValueError("not the fields of an entry")

    def integer(name: str) -> int:
        v = raw[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} is not a non-negative integer")
        return v

    def text(name: str) -> str:
        v = raw[name]
        if not isinstance(v, str):
            raise TypeError(f"{name} is not a string")
        return v

    def digest(name: str, *, empty: bool = False) -> bytes:
        try:
            v = base64.b64decode(text(name), validate=True)
        except binascii.Error:
            raise ValueError(f"{name} is not base64") from None
        if len(v) != HASH_SIZE and not (empty and not v):
            raise ValueError(f"{name} is not {HASH_SIZE} bytes")
        return v

    return Entry(
        index=integer("index"),
        time_ns=integer("time_ns"),
        region=text("region"),
        event=Event(text("event")),
        message_id=text("message_id"),
        peer_region=text("peer_region"),
        service_code=text("service_code"),
        envelope_digest=digest("envelope_digest", empty=True),
        trace_id=text("trace_id"),
        detail=text("detail"),
        prev_hash=digest("prev_hash"),
        entry_hash=digest("entry_hash"),
    )
