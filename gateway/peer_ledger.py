"""Reading other regions' ledgers over NATS: their entries about our region's traffic, checked
before use.

A region's ledger responder (:class:`~gateway.checkpoints.CheckpointPublisher`, wire format in
:mod:`gateway.ledger_wire`) answers only with entries whose ``peer_region`` is the region whose inbox
the reply goes to, so our region's credentials on the hub are the authorisation. Nothing in an
answer is used before it checks out: :func:`fetch_entries` re-hashes each entry's fields to its
entry hash, :func:`fetch_proven_entry` proves the entry against a checkpoint we hold.
"""

from __future__ import annotations

import functools
import json

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from gateway.ledger_wire import (
    MAX_ENTRIES_PER_REPLY,
    MAX_ENTRY_REPLY_BYTES,
    EntriesRequest,
    InclusionRequest,
    encode_request,
    entry_from_doc,
    json_object,
)
from ledger.checkpoint import Checkpoint
from ledger.entry import Entry, canonical_bytes, chain_hash
from ledger.errors import LedgerError
from tongban.core import subjects
from tongban.core.errors import Reason
from tongban.core.message_ids import is_message_id, is_trace_id
from tongban.runtime.bundle import proven_entry

log = structlog.get_logger("gateway.peer_ledger")


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


async def fetch_proven_entry(
    nc: NATS, region: str, leaf_index: int, checkpoint: Checkpoint, *, timeout_s: float = 5.0
) -> Entry:
    """Ask ``region`` for the entry at ``leaf_index`` with its inclusion proof in the tree of a
    checkpoint we hold (and verified), and check it against that checkpoint's root.

    Raises:
        LedgerError: no usable answer, or the entry or proof does not check out.
    """
    request = encode_request(InclusionRequest(leaf_index, checkpoint.size))
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
    :data:`~gateway.ledger_wire.MAX_ENTRIES_PER_REPLY` entries or
    :data:`~gateway.ledger_wire.MAX_ENTRY_REPLY_BYTES` is logged (``witness.entries_truncated``) and
    its entries returned.

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
    request = EntriesRequest(message_id=message_id, trace_id=trace_id)
    try:
        msg = await nc.request(
            subjects.ledger_proof_subject(region), encode_request(request), timeout=timeout_s
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise PeerReadError(
            f"{region} did not answer over NATS ({type(exc).__name__})",
            region=region,
            reason=Reason.PEER_UNREACHABLE,
        ) from None
    entries, truncated = _parse_entries_reply(msg.data, region=region, asker=asker, request=request)
    if truncated:
        log.warning("witness.entries_truncated", region=region, entries=len(entries))
    return entries


def _parse_entries_reply(
    data: bytes, *, region: str, asker: str, request: EntriesRequest
) -> tuple[list[Entry], bool]:
    def invalid(why: str) -> PeerReadError:
        return PeerReadError(
            f"{region} answered unusably: {why}", region=region, reason=Reason.PEER_ANSWER_INVALID
        )

    try:
        doc = json_object(data, limit=MAX_ENTRY_REPLY_BYTES, what="answer")
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if set(doc) == {"error"}:
        raise PeerReadError(
            f"{region} refused the read: {str(doc['error'])[:200]}", region=region, reason=Reason.PEER_REFUSED
        )
    if (
        set(doc) != {"entries", "truncated"}
        or not isinstance(doc["entries"], list)
        or not isinstance(doc["truncated"], bool)
    ):
        raise invalid("not an entries answer")
    if len(doc["entries"]) > MAX_ENTRIES_PER_REPLY:
        raise invalid(f"more than {MAX_ENTRIES_PER_REPLY} entries")
    [(key, value)] = request.selector.items()
    entries: list[Entry] = []
    for raw in doc["entries"]:
        try:
            e = entry_from_doc(raw)
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
