"""Witnessed ledger checkpoints: each region publishes its signed tree heads, every other region checks that
the log only ever grew.

Two parts, both run in a region's gateway process:

* :class:`CheckpointPublisher` signs checkpoints of the region's own ledger (``ledger.checkpoint``), on a
  schedule and on demand, publishes each to every other region of the trust registry on
  ``tb.v1.ckpt.<peer>.<own>`` (the peer's inbound space), and answers consistency-proof requests about its
  ledger on ``tb.v1.lproof.<own>`` (and there, too, other regions' requests for its entries about their
  own traffic).
* :class:`Witness` takes the checkpoints addressed to its region, verifies each against the trust registry's
  signing keys of the origin region, keeps the latest one per region on disk, and for every newer one asks
  the origin for a consistency proof and verifies it. An inconsistent checkpoint — the proof does not verify,
  the size went down, or the root changed at the same size — is an **alarm**: an error log line
  ``witness.alarm`` naming the region and both sizes, the counter :attr:`Witness.alarms`, and a
  ``WITNESS_ALARM`` entry in the witnessing region's own ledger.

Wire format (core NATS, no personal data): a checkpoint message is the signed note itself. A proof request
is JSON ``{"old_size": m, "new_size": n}``; the reply is ``{"proof": [base64 hash, ...]}`` or
``{"error": "..."}``. Two more requests on the same subject serve other regions' operators, each answered
only with entries about the asking region's own traffic (``peer_region`` is the region whose inbox the
reply goes to, which the hub's permissions tie to that region's credentials):

* ``{"leaf_index": i, "tree_size": n}``: one entry with its inclusion proof (:func:`fetch_proven_entry`);
* ``{"entries": {"message_id": "..."}}`` or ``{"entries": {"trace_id": "..."}}``: the entries of one
  message or trace, ``{"entries": [entry, ...], "truncated": bool}`` with each entry's fields, ``prev_hash``
  and ``entry_hash`` (:func:`fetch_entries`), at most :data:`MAX_ENTRIES_PER_REPLY` of them and
  :data:`MAX_ENTRY_REPLY_BYTES` in all.
Nothing in a checkpoint or a proof reply is used before it verifies: the note against the registry, the proof
against two verified roots (a forged proof can fail to verify, never make an inconsistent log look
consistent). A proof request that gets no usable answer is not an alarm — the held checkpoint stays, and the
next checkpoint asks again — since a network fault looks the same; ``proof_failures`` counts them.

Run one witness per region (a region's gateway replicas share the queue group, but each keeps its own state
file: a replica with a fresh file would adopt whatever checkpoint it sees first).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import nats.errors
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ledger.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    SignedCheckpoint,
    origin_of,
    parse_and_verify,
    read_note,
)
from ledger.entry import HASH_SIZE, Entry, Event, canonical_bytes, chain_hash
from ledger.errors import LedgerError
from ledger.files import write_atomically
from ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from ledger.store import LedgerStore
from ledger.tree import LedgerTree
from tongban.core import subjects
from tongban.core.details import Detail
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import Reason
from tongban.core.message_ids import is_message_id, is_trace_id
from tongban.core.registry import Registry
from tongban.runtime.bundle import entry_json, proven_entry
from tongban.runtime.node import RegionSecrets
from tongban.runtime.records import draft
from tongban.runtime.shutdown import stop_task, within
from tongban.v1 import registry_pb2

log = structlog.get_logger("gateway.witness")

MAX_PROOF_REQUEST_BYTES: Final = 256
MAX_PROOF_REPLY_BYTES: Final = 16384
MAX_ENTRY_REPLY_BYTES: Final = 65536
MAX_ENTRIES_PER_REPLY: Final = 200
"""Entries in one answer to an entries request (a message has a dozen or so); beyond it, or beyond
:data:`MAX_ENTRY_REPLY_BYTES`, the answer holds the first ones and says ``truncated``."""
_QUEUE_PER_REGION: Final = 16
"""Checkpoints of one region waiting to be witnessed; beyond it the oldest is dropped."""
MAX_PROOF_HASHES: Final = 128
"""A consistency proof has at most about 2·log2(size) hashes: 126 for a tree of 2**63 leaves."""
_HASH_SIZE: Final = 32
_PENDING_MSGS: Final = 1024
_STOP_S: Final = 2.0
"""Default bound of a stop of the publisher, the witness or one of their subscriptions."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Subscriber:
    """A subscription drained by a task of our own, so stop() can end it within a bound."""

    def __init__(self, name: str, handle: Callable[[Msg], Any]) -> None:
        self._name = name
        self._handle = handle
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, nc: NATS, subject: str, queue: str) -> None:
        self._stopping = False
        self._sub = await nc.subscribe(subject, queue=queue, pending_msgs_limit=_PENDING_MSGS)
        self._task = asyncio.create_task(self._drain(self._sub), name=self._name)

    async def stop(self, timeout: float = _STOP_S) -> None:
        """Cancel the drain (the message in hand is dropped: a proof request is asked again, a
        checkpoint comes again) and unsubscribe, within ``timeout``."""
        task, self._task = self._task, None
        sub, self._sub = self._sub, None
        self._stopping = True
        await stop_task(task, timeout=timeout, what=self._name)
        if sub is not None:
            await within(sub.unsubscribe(), timeout=min(timeout, 1.0), what=f"{self._name} unsubscribe")

    async def _drain(self, sub: Subscription) -> None:
        async for msg in sub.messages:
            # A handler's NATS request can swallow a cancel (3.11 wait_for): the flag ends the loop.
            if self._stopping:
                return
            try:
                await self._handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "witness.handler_failed", task=self._name, error=type(exc).__name__, detail=str(exc)[:200]
                )


# -- the publishing side ----------------------------------------------------------------------------


class CheckpointPublisher:
    """Signs this region's ledger checkpoints, publishes them to every peer region, answers proof and
    entries requests.

    Args:
        region: this region's code.
        nc: a connection to the region's nats-server with the region's inbox prefix.
        ledger: the region's ledger store (open).
        registry: the live trust registry (peers are its other regions, read at each publication).
        secrets: the region's keys; checkpoints are signed with ``secrets.signing``, the key in use now.
        state_path: the signer's state file (the last signed checkpoint); keep it with the ledger.
        interval_s: period of scheduled checkpoints.
        publish_timeout_s: deadline of the flush after publishing one checkpoint to every peer.
        tree: the ledger's tree to share (the gateway's, which its ledger service proves from); None: its own.
    """

    def __init__(
        self,
        region: str,
        nc: NATS,
        ledger: LedgerStore,
        registry: Registry,
        secrets: RegionSecrets,
        *,
        state_path: str | os.PathLike[str],
        interval_s: float = 60.0,
        publish_timeout_s: float = 5.0,
        tree: LedgerTree | None = None,
    ) -> None:
        self.region = region
        self.nc = nc
        self.registry = registry
        self.publish_timeout_s = publish_timeout_s
        self.signer = CheckpointSigner(
            ledger,
            key=lambda: secrets.signing,
            state_path=state_path,
            origin=origin_of(region),
            interval_s=interval_s,
            on_checkpoint=self.publish,
            tree=tree,
        )
        self.published = 0
        """Checkpoint publications (one per checkpoint, to all peers)."""
        self._proofs = _Subscriber(f"lproof-{region}", self._answer)
        self._started = False

    async def start(self) -> None:
        """Open the signer, answer proof requests, then publish a checkpoint now and every interval;
        idempotent. A failed start releases what it took."""
        if self._started:
            return
        await self.signer.open()
        try:
            await self._proofs.start(
                self.nc, subjects.ledger_proof_subject(self.region), subjects.ledger_proof_queue(self.region)
            )
            await self.signer.start()
        except BaseException:
            await self._proofs.stop()
            raise
        self._started = True

    async def stop(self, timeout: float = _STOP_S) -> None:
        """Stop the schedule and the proof responder, each within ``timeout`` (a checkpoint being
        signed is finished or abandoned: signing and saving it are one synchronous step);
        idempotent."""
        await self.signer.stop(timeout=timeout)
        await self._proofs.stop(timeout)
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish_now(self) -> SignedCheckpoint:
        """Sign a fresh checkpoint and publish it to every peer.

        Raises:
            CheckpointRefused: the ledger is not consistent with the last signed checkpoint.
        """
        signed = await self.signer.sign_now()
        await self.publish(signed)
        return signed

    async def publish(self, signed: SignedCheckpoint) -> None:
        """Publish a signed checkpoint to every other region of the registry."""
        peers = sorted(code for code in self.registry.regions if code != self.region)
        for peer in peers:
            await self.nc.publish(subjects.checkpoint_subject(peer, self.region), signed.note)
        await self.nc.flush(timeout=max(1, math.ceil(self.publish_timeout_s)))  # nats-py takes whole seconds
        self.published += 1
        log.info(
            "witness.checkpoint_published", region=self.region, size=signed.checkpoint.size, peers=len(peers)
        )

    async def _answer(self, msg: Msg) -> None:
        # Answer only into a registered region's inbox: the hub lets any region publish here, and an
        # arbitrary reply subject would make this responder a relay into a third region's subjects.
        reply_region = subjects.inbox_region(msg.reply or "")
        if reply_region is None or self.registry.region(reply_region) is None:
            log.warning("witness.proof_request_dropped", reason="reply subject is not a region inbox")
            return
        try:
            doc = _request_doc(msg.data)
            selector = _parse_entries_request(doc)
            if selector is not None:
                reply, count = await self._entries(*selector, asker=reply_region)
                await msg.respond(reply)
                log.debug("witness.entries_answered", peer=reply_region, entries=count)
                return
            inclusion = _parse_inclusion_request(doc)
            if inclusion is not None:
                entry = await self._inclusion(*inclusion, asker=reply_region)
                await msg.respond(json.dumps({"entry": entry}).encode())
                log.debug(
                    "witness.inclusion_answered", peer=reply_region, leaf=inclusion[0], size=inclusion[1]
                )
                return
            old_size, new_size = _parse_proof_request(doc)
            proof = await self.signer.consistency_proof(old_size, new_size)
        except ValueError as exc:
            await msg.respond(json.dumps({"error": str(exc)[:200]}).encode())
            return
        await msg.respond(json.dumps({"proof": [_b64(h) for h in proof]}).encode())
        log.debug("witness.proof_answered", peer=reply_region, old_size=old_size, new_size=new_size)

    async def _inclusion(self, leaf_index: int, size: int, *, asker: str) -> dict[str, Any]:
        """One entry with its inclusion proof in the tree of ``size`` (what a receipt holder asks):
        only an entry about the asking region's own traffic (its ``peer_region``), so no region can
        page through this region's dealings with the others."""
        tree = self.signer.tree
        await tree.sync(self.signer.store)
        if not 0 <= leaf_index < size <= tree.size:
            raise ValueError(f"cannot prove leaf {leaf_index} in a tree of size {size} (ledger: {tree.size})")
        [entry] = await self.signer.store.entries(leaf_index, leaf_index + 1)
        if entry.peer_region != asker:
            raise ValueError(f"leaf {leaf_index} is not about region {asker}'s traffic")
        return entry_json(entry, tree.tree.inclusion_proof(leaf_index, size))

    async def _entries(self, message_id: str, trace_id: str, *, asker: str) -> tuple[bytes, int]:
        """The answer to an entries request: the message's or trace's entries about the asking
        region's own traffic (its ``peer_region``), the first ones that fit, and how many."""
        store = self.signer.store
        found = await (store.by_message_id(message_id) if message_id else store.by_trace_id(trace_id))
        theirs = [e for e in found if e.peer_region == asker]
        parts: list[bytes] = []
        room = MAX_ENTRY_REPLY_BYTES - len(b'{"entries":[],"truncated":false}')
        for e in theirs[:MAX_ENTRIES_PER_REPLY]:
            part = json.dumps(_entry_doc(e), separators=(",", ":"), ensure_ascii=False).encode()
            if len(part) + 1 > room:
                break
            parts.append(part)
            room -= len(part) + 1
        truncated = b"true" if len(parts) < len(theirs) else b"false"
        return b'{"entries":[' + b",".join(parts) + b'],"truncated":' + truncated + b"}", len(parts)


def _entry_doc(e: Entry) -> dict[str, Any]:
    """An entry as :func:`tongban.runtime.bundle.entry_json` encodes it, with its chain link instead of an
    inclusion proof and without the canonical bytes (the asker re-encodes the fields and checks that
    they hash, with ``prev_hash``, to ``entry_hash``)."""
    doc = entry_json(e, ())
    del doc["inclusion_proof"], doc["entry_bytes"]
    doc["prev_hash"] = _b64(e.prev_hash)
    doc["entry_hash"] = _b64(e.entry_hash)
    return doc


def _request_doc(data: bytes) -> dict[str, Any]:
    """A request to the ledger proof responder, parsed (every kind is a small JSON object)."""
    if len(data) > MAX_PROOF_REQUEST_BYTES:
        raise ValueError("request too large")
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError("request is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("request is not a JSON object")
    return doc


def _parse_entries_request(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(message id, trace id) of an entries request, exactly one of them set; None for another kind
    of request."""
    if "entries" not in doc:
        return None
    selector = doc["entries"]
    if set(doc) != {"entries"} or not isinstance(selector, dict) or len(selector) != 1:
        raise ValueError('request must be {"entries": {"message_id" or "trace_id": ...}}')
    [(key, value)] = selector.items()
    if key == "message_id" and isinstance(value, str) and is_message_id(value):
        return value, ""
    if key == "trace_id" and isinstance(value, str) and is_trace_id(value):
        return "", value
    raise ValueError("entries are selected by a well-formed message_id (ULID) or trace_id (32 hex digits)")


def _parse_inclusion_request(doc: dict[str, Any]) -> tuple[int, int] | None:
    """(leaf index, tree size) of an inclusion request, None for another kind of request."""
    if "leaf_index" not in doc:
        return None
    if set(doc) != {"leaf_index", "tree_size"}:
        raise ValueError("request must be {leaf_index, tree_size}")
    leaf, size = doc["leaf_index"], doc["tree_size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (leaf, size)):
        raise ValueError("leaf index and size must be integers")
    return leaf, size


async def fetch_proven_entry(
    nc: NATS, region: str, leaf_index: int, checkpoint: Checkpoint, *, timeout_s: float = 5.0
) -> Entry:
    """Ask ``region`` for the entry at ``leaf_index`` with its inclusion proof in the tree of a
    checkpoint we hold (and verified), and check it against that checkpoint's root.

    Raises:
        LedgerError: no usable answer, or the entry or proof does not check out.
    """
    request = json.dumps({"leaf_index": leaf_index, "tree_size": checkpoint.size}).encode()
    try:
        msg = await nc.request(subjects.ledger_proof_subject(region), request, timeout=timeout_s)
        doc = json.loads(msg.data) if len(msg.data) <= MAX_ENTRY_REPLY_BYTES else None
    except (nats.errors.Error, TimeoutError, ValueError) as exc:
        raise LedgerError(f"{region} gave no inclusion proof ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or "entry" not in doc:
        detail = doc.get("error", "malformed answer") if isinstance(doc, dict) else "malformed answer"
        raise LedgerError(f"{region} gave no inclusion proof: {str(detail)[:200]}")
    entry = proven_entry(doc["entry"], region=region, size=checkpoint.size, root=checkpoint.root)
    if entry.index != leaf_index:
        raise LedgerError(f"{region} answered with leaf {entry.index}, not leaf {leaf_index}")
    return entry


class PeerReadError(LedgerError):
    """Another region's entries could not be read over NATS.

    Attributes:
        region: the region asked.
        reason: ``PEER_UNREACHABLE`` (no responder, no answer in time, connection down),
            ``PEER_REFUSED`` (it answered with an error) or ``PEER_ANSWER_INVALID`` (the answer is
            malformed, or an entry is not the asked region's, not about our traffic, or does not hash
            to its entry hash).
    """

    def __init__(self, message: str, *, region: str, reason: Reason) -> None:
        super().__init__(message)
        self.region = region
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (functools.partial(PeerReadError, region=self.region, reason=self.reason), (str(self),))


async def fetch_entries(
    nc: NATS, region: str, *, message_id: str = "", trace_id: str = "", timeout_s: float = 5.0
) -> list[Entry]:
    """The entries of ``region``'s ledger about one message or trace of our region's traffic, read
    over NATS (our region's credentials on the hub are the authorisation; ``region`` answers only
    with entries whose ``peer_region`` is ours), in index order.

    Every entry is checked: it is ``region``'s, about our region, of the message or trace asked, and
    its fields encode to bytes that hash, after its ``prev_hash``, to its ``entry_hash``. Our region
    is the one whose inbox the connection's replies land in (what the responder sees), so ``nc``
    must have been opened with the region's inbox prefix. An answer cut short at
    :data:`MAX_ENTRIES_PER_REPLY` entries or :data:`MAX_ENTRY_REPLY_BYTES` is logged
    (``witness.entries_truncated``) and its entries returned.

    Args:
        nc: a connection to our region's nats-server with our region's inbox prefix.
        region: the region whose ledger to read.
        message_id: the message (exactly one of ``message_id`` and ``trace_id``).
        trace_id: the trace.
        timeout_s: deadline of the request.

    Raises:
        ValueError: not exactly one well-formed selector.
        PeerReadError: no usable answer (its ``reason`` says which kind).
    """
    if bool(message_id) == bool(trace_id):
        raise ValueError("give exactly one of message_id and trace_id")
    if message_id and not is_message_id(message_id):
        raise ValueError("message_id is not a message id (26-character ULID)")
    if trace_id and not is_trace_id(trace_id):
        raise ValueError("trace_id is not a trace id (32 lower-case hex digits)")
    asker = subjects.inbox_region(nc.new_inbox())
    if asker is None:
        raise ValueError("the NATS connection has no region inbox prefix: peers answer only into one")
    selector = {"message_id": message_id} if message_id else {"trace_id": trace_id}
    request = json.dumps({"entries": selector}).encode()
    try:
        msg = await nc.request(subjects.ledger_proof_subject(region), request, timeout=timeout_s)
    except (nats.errors.Error, TimeoutError) as exc:
        raise PeerReadError(
            f"{region} did not answer over NATS ({type(exc).__name__})",
            region=region,
            reason=Reason.PEER_UNREACHABLE,
        ) from None
    entries, truncated = _parse_entries_reply(msg.data, region=region, asker=asker, selector=selector)
    if truncated:
        log.warning("witness.entries_truncated", region=region, entries=len(entries))
    return entries


def _parse_entries_reply(
    data: bytes, *, region: str, asker: str, selector: dict[str, str]
) -> tuple[list[Entry], bool]:
    def invalid(why: str) -> PeerReadError:
        return PeerReadError(
            f"{region} answered unusably: {why}", region=region, reason=Reason.PEER_ANSWER_INVALID
        )

    if len(data) > MAX_ENTRY_REPLY_BYTES:
        raise invalid("answer too large")
    try:
        doc = json.loads(data)
    except ValueError:
        raise invalid("not JSON") from None
    if isinstance(doc, dict) and set(doc) == {"error"}:
        raise PeerReadError(
            f"{region} refused the read: {str(doc['error'])[:200]}", region=region, reason=Reason.PEER_REFUSED
        )
    if (
        not isinstance(doc, dict)
        or set(doc) != {"entries", "truncated"}
        or not isinstance(doc["entries"], list)
        or not isinstance(doc["truncated"], bool)
    ):
        raise invalid("not an entries answer")
    if len(doc["entries"]) > MAX_ENTRIES_PER_REPLY:
        raise invalid(f"more than {MAX_ENTRIES_PER_REPLY} entries")
    [(key, value)] = selector.items()
    entries: list[Entry] = []
    for raw in doc["entries"]:
        try:
            e = _checked_entry(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise invalid(f"an entry does not parse ({str(exc)[:100]})") from None
        if e.region != region:
            raise invalid(f"entry {e.index} belongs to region {e.region}")
        if e.peer_region != asker:
            raise invalid(f"entry {e.index} is not about region {asker}'s traffic")
        if getattr(e, key) != value:
            raise invalid(f"entry {e.index} is not of the {key.replace('_', ' ')} asked")
        if chain_hash(e.prev_hash, canonical_bytes(e)) != e.entry_hash:
            raise invalid(f"entry {e.index}: its fields do not hash to its entry hash")
        if entries and e.index <= entries[-1].index:
            raise invalid("entries are not in index order")
        entries.append(e)
    return entries, doc["truncated"]


_ENTRY_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Entry))
"""The keys of an entry document: exactly the fields of :class:`Entry`."""


def _checked_entry(raw: Any) -> Entry:
    """An :func:`_entry_doc` back to an :class:`Entry`, every field of its exact JSON type.

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


def _parse_proof_request(doc: dict[str, Any]) -> tuple[int, int]:
    if set(doc) != {"old_size", "new_size"}:
        raise ValueError("request must be {old_size, new_size}")
    old, new = doc["old_size"], doc["new_size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new)):
        raise ValueError("sizes must be integers")
    return old, new


# -- the witnessing side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alarm:
    """An inconsistency a witness saw in another region's log."""

    region: str
    held_size: int
    held_root: bytes
    new_size: int
    new_root: bytes
    reason: str

    def detail(self) -> Detail:
        return Detail(
            outcome=self.reason,
            held_size=self.held_size,
            held_root=_b64(self.held_root),
            new_size=self.new_size,
            new_root=_b64(self.new_root),
        )


@dataclass(frozen=True, slots=True)
class FirstSight:
    """When a witness first trusted a region's log, and the checkpoint it trusted (no proof exists
    from nothing: trust on first use)."""

    at_ms: int
    size: int
    root: bytes


class Witness:
    """Verifies other regions' checkpoints and raises an alarm when a log did not only grow.

    Args:
        region: this (witnessing) region's code.
        nc: a connection to the region's nats-server with the region's inbox prefix.
        ledger: this region's ledger store (open), where alarms are recorded.
        registry: the live trust registry (the origin regions' signing keys, read per checkpoint).
        state_path: where the latest verified checkpoint of every region is kept (JSON, written atomically).
        request_timeout_s: deadline of each consistency-proof request.
        clock: seconds since the epoch (key validity is checked at receipt).

    Attributes:
        alarms: alarms raised (each distinct inconsistent checkpoint counts once).
        verified: consistency proofs verified.
        refused: checkpoints refused (malformed, wrong origin, unknown key, bad signature).
        proof_failures: proof requests that got no usable answer (timeout, no responder, error, malformed).
        trusted_on_first_use: logs first adopted without a proof (their first non-empty checkpoint).
    """

    def __init__(
        self,
        region: str,
        nc: NATS,
        ledger: LedgerStore,
        registry: Registry,
        *,
        state_path: str | os.PathLike[str],
        request_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.nc = nc
        self.ledger = ledger
        self.registry = registry
        self.state_path = Path(state_path)
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self.alarms = 0
        self.verified = 0
        self.refused = 0
        self.proof_failures = 0
        self._held: dict[str, SignedCheckpoint] = {}
        self._alarmed: dict[str, tuple[int, bytes]] = {}
        self._first_sight: dict[str, FirstSight] = {}
        self.trusted_on_first_use = 0
        self._sub = _Subscriber(f"witness-{region}", self._receive)
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._loaded = False
        self._stopping = False

    def latest(self, region: str) -> Checkpoint | None:
        """The latest verified checkpoint of ``region``, or None."""
        held = self._held.get(region)
        return held.checkpoint if held else None

    def first_sight(self, region: str) -> FirstSight | None:
        """When and what this witness trusted on first use of ``region``'s log, or None."""
        return self._first_sight.get(region)

    def latest_note(self, region: str) -> bytes | None:
        """The signed note of :meth:`latest` (evidence a third party can check)."""
        held = self._held.get(region)
        return held.note if held else None

    async def start(self) -> None:
        """Load the state file and subscribe to checkpoints addressed to this region; idempotent.

        Raises:
            LedgerError: the state file is unreadable.
        """
        if not self._loaded:
            self._load()
            self._loaded = True
        self._stopping = False
        await self._sub.stop()
        await self._sub.start(
            self.nc, subjects.checkpoint_wildcard(self.region), subjects.witness_queue(self.region)
        )

    async def stop(self, timeout: float = _STOP_S) -> None:
        """Unsubscribe and stop the per-region workers, within ``timeout``; idempotent. A checkpoint
        not yet witnessed is dropped: its region publishes a newer one on its schedule."""
        self._stopping = True
        await self._sub.stop(timeout)
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(stop_task(t, timeout=timeout, what=t.get_name()) for t in workers))
        self._queues.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _receive(self, msg: Msg) -> None:
        if self._stopping:
            return  # no new worker once stop() has collected them
        origin_region = msg.subject.rsplit(".", 1)[-1]
        if origin_region == self.region or self.registry.region(origin_region) is None:
            log.warning("witness.checkpoint_dropped", origin_region=origin_region[:16], reason="not a peer")
            return
        # One queue and one worker per origin region: a region that floods checkpoints, or never
        # answers proof requests, delays only its own witnessing. A full queue drops its oldest
        # note (a later one is checked against the held checkpoint all the same).
        queue = self._queues.setdefault(origin_region, asyncio.Queue(maxsize=_QUEUE_PER_REGION))
        if queue.full():
            queue.get_nowait()
            log.warning("witness.checkpoint_dropped", origin_region=origin_region, reason="queue full")
        queue.put_nowait(msg.data)
        worker = self._workers.get(origin_region)
        if worker is None or worker.done():
            self._workers[origin_region] = asyncio.create_task(
                self._work(origin_region, queue), name=f"witness-{self.region}-{origin_region}"
            )

    async def _work(self, origin_region: str, queue: asyncio.Queue[bytes]) -> None:
        while not queue.empty() and not self._stopping:
            note = queue.get_nowait()
            try:
                await self.witness(origin_region, note)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("witness.handler_failed", region=origin_region, error=type(exc).__name__)

    async def witness(self, origin_region: str, note: bytes) -> None:
        """Check one checkpoint note of ``origin_region`` (what a NATS message delivers)."""
        if len(note) > MAX_NOTE_BYTES:
            self._refuse(origin_region, "note too large")
            return
        keys = self._signing_keys(origin_region)
        if not keys:
            self._refuse(origin_region, "no valid signing key in the registry")
            return
        origin = origin_of(origin_region)
        try:
            cp = parse_and_verify(note, {origin: keys}, origin=origin)
        except CheckpointError as exc:
            self._refuse(origin_region, str(exc.reason))
            return
        signed = SignedCheckpoint(cp, note)
        held = self._held.get(origin_region)
        if cp.size == 0 and cp.root != EMPTY_ROOT:
            await self._alarm(held, signed, origin_region, "signed an empty tree with a non-empty root")
            return
        if held is None or (held.checkpoint.size == 0 and cp.size > 0):
            # Nothing earlier (or only the empty tree) to prove this one against: RFC 9162 has no
            # consistency proof from size 0. Adopting it is trust on first use, and is said so.
            self._trust_first(origin_region, signed)
            return
        old = held.checkpoint
        if cp.size < old.size:
            # An older checkpoint arriving late (another replica, a replay by anyone holding it) is
            # a prefix of the one held: only a failing proof from it to the held one is an alarm.
            if cp.size == 0:
                return  # the empty tree is a prefix of every tree (its root was checked above)
            proof = await self._request_proof(origin_region, cp.size, old.size)
            if proof is None:
                return
            try:
                verify_consistency(cp.size, old.size, cp.root, old.root, proof)
            except ProofError:
                await self._alarm(
                    held, signed, origin_region, "older checkpoint is not a prefix of the held one"
                )
                return
            log.debug("witness.stale_checkpoint", region=origin_region, size=cp.size, held_size=old.size)
        elif cp.size == old.size:
            if cp.root != old.root:
                await self._alarm(held, signed, origin_region, "different root at the same size")
        else:
            proof = await self._request_proof(origin_region, old.size, cp.size)
            if proof is None:
                return
            try:
                verify_consistency(old.size, cp.size, old.root, cp.root, proof)
            except ProofError:
                await self._alarm(held, signed, origin_region, "consistency proof does not verify")
                return
            self.verified += 1
            self._adopt(origin_region, signed)

    def _signing_keys(self, region: str) -> list[Ed25519PublicKey]:
        now = self._clock()
        keys = []
        for info in self.registry.keys_of(region, registry_pb2.KEY_USE_SIGNING):
            try:
                keys.append(self.registry.signing_public_key(info.key_id, region=region, at_s=now))
            except EnvelopeRejected:
                continue
        return keys

    async def _request_proof(self, region: str, old_size: int, new_size: int) -> list[bytes] | None:
        request = json.dumps({"old_size": old_size, "new_size": new_size}).encode()
        try:
            reply = await self.nc.request(
                subjects.ledger_proof_subject(region), request, timeout=self.request_timeout_s
            )
            proof = _parse_proof_reply(reply.data)
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            self.proof_failures += 1
            log.warning(
                "witness.proof_unavailable",
                region=region,
                old_size=old_size,
                new_size=new_size,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
            return None
        return proof

    def _refuse(self, region: str, reason: str) -> None:
        self.refused += 1
        log.warning("witness.checkpoint_refused", region=region, reason=reason)

    def _trust_first(self, region: str, signed: SignedCheckpoint) -> None:
        """Adopt the first non-empty checkpoint of ``region``'s log without a proof, on record: the
        state file keeps when, at which size and root (what every later checkpoint is proven against),
        and the log line is a warning an operator can alarm on if it appears after the first days."""
        cp = signed.checkpoint
        self._first_sight[region] = FirstSight(int(self._clock() * 1000), cp.size, cp.root)
        self.trusted_on_first_use += 1
        log.warning("witness.trust_on_first_use", region=region, size=cp.size, root=_b64(cp.root))
        self._adopt(region, signed, first=True)

    def _adopt(self, region: str, signed: SignedCheckpoint, *, first: bool = False) -> None:
        self._held[region] = signed
        self._save()
        log.info(
            "witness.checkpoint_adopted" if first else "witness.checkpoint_verified",
            region=region,
            size=signed.checkpoint.size,
        )

    async def _alarm(
        self, held: SignedCheckpoint | None, new: SignedCheckpoint, region: str, reason: str
    ) -> None:
        cp = new.checkpoint
        if self._alarmed.get(region) == (cp.size, cp.root):
            return  # the same conflicting checkpoint published again: already recorded
        old = held.checkpoint if held else cp
        alarm = Alarm(region, old.size, old.root, cp.size, cp.root, reason)
        self._alarmed[region] = (cp.size, cp.root)
        self._save()
        log.error(
            "witness.alarm",
            region=region,
            held_size=alarm.held_size,
            new_size=alarm.new_size,
            reason=reason,
            held_root=_b64(alarm.held_root),
            new_root=_b64(alarm.new_root),
        )
        try:
            await self.ledger.append(
                draft(
                    Event.WITNESS_ALARM,
                    f"witness-{region}-{alarm.held_size}-{alarm.new_size}",
                    peer=region,
                    service="",
                    detail=alarm.detail(),
                )
            )
        except LedgerError as exc:
            log.error("witness.alarm_not_recorded", region=region, error=type(exc).__name__)
        # Counted last, so whoever sees the counter move also finds the ledger entry.
        self.alarms += 1

    def _load(self) -> None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
            held = {r: read_note(n.encode("utf-8")) for r, n in doc["held"].items()}
            alarmed = {r: (int(a["size"]), base64.b64decode(a["root"])) for r, a in doc["alarmed"].items()}
            first_sight = {
                r: FirstSight(int(f["at_ms"]), int(f["size"]), base64.b64decode(f["root"]))
                for r, f in doc.get("first_sight", {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, CheckpointError) as exc:
            raise LedgerError(f"witness state {self.state_path} is unreadable: {exc}") from None
        for r, signed in held.items():
            if signed.checkpoint.origin != origin_of(r):
                raise LedgerError(
                    f"witness state {self.state_path} holds a checkpoint of another log for {r}"
                )
        self._held, self._alarmed, self._first_sight = held, alarmed, first_sight

    def _save(self) -> None:
        doc = {
            "v": 1,
            "region": self.region,
            "held": {r: s.note.decode("utf-8") for r, s in sorted(self._held.items())},
            "alarmed": {r: {"size": n, "root": _b64(root)} for r, (n, root) in sorted(self._alarmed.items())},
            "first_sight": {
                r: {"at_ms": f.at_ms, "size": f.size, "root": _b64(f.root)}
                for r, f in sorted(self._first_sight.items())
            },
        }
        write_atomically(self.state_path, json.dumps(doc, indent=1).encode(), mode=0o600)


def _parse_proof_reply(data: bytes) -> list[bytes]:
    if len(data) > MAX_PROOF_REPLY_BYTES:
        raise ValueError("proof reply too large")
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError("proof reply is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("proof reply is not an object")
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
        if len(raw) != _HASH_SIZE:
            raise ValueError("proof hash is not 32 bytes")
        proof.append(raw)
    return proof
