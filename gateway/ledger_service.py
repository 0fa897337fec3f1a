"""The Ledger gRPC service of a region's gateway: entries, inclusion and consistency proofs, and the
latest signed checkpoint, for partners, peer regions and auditors.

Entries are selected by message id, trace id, case number (resolved through the gateway's case
store to the case's request message), time range or index range. By message id or trace id, the
service also reads another region's entries about this region's traffic (``GetEntriesRequest.region``)
through its peer reader, over NATS: an operator asks only their own gateway, whose partner
certificates they hold, and the peer region answers the gateway's region, not the operator.

Proofs default to the size of the latest checkpoint (what a client can check a root against);
without a checkpoint yet, to the tree's current size. The tree catches up with the store (which the
region's connector appends to as well) before every answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.peer_ledger import PeerReadError
from ledger import Entry, LedgerStore
from ledger.entry import canonical_bytes
from ledger.merkle import leaf_hash
from ledger.tree import LedgerTree
from tongban.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Reason,
    TongbanError,
    Unavailable,
    Violation,
)
from tongban.core.message_ids import is_case_no, is_message_id, is_trace_id
from tongban.v1 import ledger_pb2, ledger_pb2_grpc

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
PEER_TIMEOUT_S: Final = 5.0
"""Deadline of a read of another region's entries when the RPC has none (or a longer one)."""
_PEER_MARGIN_S: Final = 0.1
"""Kept from the RPC's remaining time for answering after the peer read."""

LatestCheckpoint = Callable[[], "tuple[bytes, int, bytes] | None"]
"""Returns (signed note, tree size, root hash) of the latest checkpoint, or None before the first."""


class CaseRecord(Protocol):
    """What the Ledger service needs of a case: the message id of its request."""

    @property
    def message_id(self) -> str: ...


CaseLookup = Callable[[str], Awaitable["CaseRecord | None"]]
"""The case of a case number, or None (the gateway's ``CaseStore.get``)."""


class PeerReader(Protocol):
    """Reads another region's entries about this region's traffic (``gateway.peer_ledger.fetch_entries``
    with the gateway's NATS connection bound).

    Raises :class:`~gateway.peer_ledger.PeerReadError` (its ``reason``: ``PEER_UNREACHABLE``,
    ``PEER_REFUSED`` or ``PEER_ANSWER_INVALID``) when there is no usable answer.
    """

    def __call__(
        self, region: str, /, *, message_id: str = ..., trace_id: str = ..., timeout_s: float = ...
    ) -> Awaitable[list[Entry]]: ...


def entry_message(e: Entry) -> ledger_pb2.LedgerEntry:
    data = canonical_bytes(e)
    t = Timestamp()
    t.FromNanoseconds(e.time_ns)
    return ledger_pb2.LedgerEntry(
        index=e.index,
        time=t,
        region=e.region,
        event=str(e.event),
        message_id=e.message_id,
        peer_region=e.peer_region,
        service_code=e.service_code,
        envelope_digest=e.envelope_digest,
        trace_id=e.trace_id,
        detail=e.detail,
        prev_hash=e.prev_hash,
        hash=e.entry_hash,
        entry_bytes=data,
        leaf_hash=leaf_hash(data),
    )


class LedgerService(ledger_pb2_grpc.LedgerServicer):
    def __init__(
        self,
        store: LedgerStore,
        tree: LedgerTree,
        latest_checkpoint: LatestCheckpoint,
        *,
        case_lookup: CaseLookup | None = None,
        peer_reader: PeerReader | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        """Serve ``store``'s entries and proofs.

        Args:
            store: the region's ledger.
            tree: the Merkle tree kept in step with ``store``.
            latest_checkpoint: the latest signed checkpoint.
            case_lookup: case number to case (the gateway's case store); without it the
                ``case_no`` selector finds no case.
            peer_reader: reads other regions' entries (``GetEntriesRequest.region``); without it
                such reads are UNAVAILABLE.
            peer_timeout_s: deadline of a peer read, shortened to the RPC's remaining time.
        """
        self.store = store
        self.tree = tree
        self.latest_checkpoint = latest_checkpoint
        self.case_lookup = case_lookup
        self.peer_reader = peer_reader
        self.peer_timeout_s = peer_timeout_s

    async def GetEntries(
        self, request: ledger_pb2.GetEntriesRequest, context: Any
    ) -> ledger_pb2.GetEntriesResponse:
        limit = request.limit or DEFAULT_LIMIT
        if limit > MAX_LIMIT:
            raise InvalidRequest("limit too large", violations=[Violation("limit", f"at most {MAX_LIMIT}")])
        if request.region and request.region != self.store.region:
            found = await self._from_peer(request, context)
            return ledger_pb2.GetEntriesResponse(
                entries=[entry_message(e) for e in found[:limit]], truncated=len(found) > limit
            )
        size = await self.store.size()
        which = request.WhichOneof("selector")
        if which == "message_id":
            if not request.message_id:
                raise InvalidRequest(
                    "empty selector", violations=[Violation("message_id", "must not be empty")]
                )
            found = await self.store.by_message_id(request.message_id)
        elif which == "trace_id":
            if not request.trace_id:
                raise InvalidRequest(
                    "empty selector", violations=[Violation("trace_id", "must not be empty")]
                )
            found = await self.store.by_trace_id(request.trace_id)
        elif which == "case_no":
            found = await self.store.by_message_id(await self._case_message_id(request.case_no))
        elif which == "index_range":
            r = request.index_range
            if r.stop and r.stop < r.start:
                raise InvalidRequest(
                    "bad range", violations=[Violation("index_range.stop", "must not be below start")]
                )
            stop = min(r.stop or size, size, r.start + limit + 1)
            found = await self.store.entries(min(r.start, size), stop)
        elif which == "time_range":
            found = await self._by_time(request.time_range, limit + 1)
        else:
            raise InvalidRequest(
                "no selector",
                violations=[
                    Violation("selector", "give message_id, trace_id, case_no, time_range or index_range")
                ],
            )
        return ledger_pb2.GetEntriesResponse(
            entries=[entry_message(e) for e in found[:limit]], tree_size=size, truncated=len(found) > limit
        )

    async def _from_peer(self, request: ledger_pb2.GetEntriesRequest, context: Any) -> list[Entry]:
        """``request.region``'s entries about this region's traffic, read through the peer reader
        within the RPC's deadline."""
        region, which = request.region, request.WhichOneof("selector")
        if not (len(region) == 6 and region.isascii() and region.isdigit()):
            raise InvalidRequest(
                "bad region", violations=[Violation("region", "must be a 6-digit region code")]
            )
        if which == "message_id" and is_message_id(request.message_id):
            selector = {"message_id": request.message_id}
        elif which == "trace_id" and is_trace_id(request.trace_id):
            selector = {"trace_id": request.trace_id}
        elif which in ("message_id", "trace_id"):
            what = "a message id (26-character ULID)" if which == "message_id" else "32 lower-case hex digits"
            raise InvalidRequest(
                "malformed selector", violations=[Violation(which, f"must be {what} to read another region")]
            )
        else:
            raise InvalidRequest(
                "selector not available for another region",
                violations=[
                    Violation("region", "another region's entries are read by message_id or trace_id only")
                ],
            )
        if self.peer_reader is None:
            raise Unavailable(
                "this gateway reads no other region's ledger (no NATS)", reason=Reason.PEER_UNREACHABLE
            )
        remaining = context.time_remaining() if context is not None else None
        timeout = (
            self.peer_timeout_s if remaining is None else min(self.peer_timeout_s, remaining - _PEER_MARGIN_S)
        )
        if timeout <= 0:
            raise DeadlineExceeded(f"no time left to read {region}'s entries")
        try:
            return await self.peer_reader(region, timeout_s=timeout, **selector)
        except PeerReadError as exc:
            if exc.reason is Reason.PEER_UNREACHABLE:
                raise Unavailable(str(exc), reason=exc.reason) from None
            raise TongbanError(str(exc), reason=exc.reason) from None

    async def _case_message_id(self, case_no: str) -> str:
        if not case_no:
            raise InvalidRequest("empty selector", violations=[Violation("case_no", "must not be empty")])
        lookup = self.case_lookup if is_case_no(case_no) else None
        case = await lookup(case_no) if lookup is not None else None
        if case is None:
            # Cases submitted through another region's gateway are known there (the case number
            # starts with that region's code). The number asked for is caller text: never echoed.
            raise NotFound("no such case was submitted through this gateway", reason=Reason.CASE_NOT_FOUND)
        return case.message_id

    async def _by_time(self, r: ledger_pb2.TimeRange, want: int) -> list[Entry]:
        start = r.start.ToNanoseconds() if r.HasField("start") else 0
        end = r.end.ToNanoseconds() if r.HasField("end") else (1 << 63) - 1
        return await self.store.by_time(start, end, want)

    async def _sizes(self, requested: int, field: str) -> int:
        """The tree size to prove against: the requested one, or the latest checkpoint's."""
        await self.tree.sync(self.store)
        if requested == 0:
            latest = self.latest_checkpoint()
            requested = latest[1] if latest is not None else self.tree.size
        if requested > self.tree.size:
            raise InvalidRequest(
                "tree size beyond the ledger",
                violations=[Violation(field, f"the ledger has {self.tree.size} entries")],
            )
        return requested

    async def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: Any
    ) -> ledger_pb2.GetInclusionProofResponse:
        size = await self._sizes(request.tree_size, "tree_size")
        if request.leaf_index >= size:
            latest = "" if request.tree_size else " of the latest checkpoint (ask with tree_size, or later)"
            raise InvalidRequest(
                "no such leaf",
                violations=[Violation("leaf_index", f"must be below the tree size {size}{latest}")],
            )
        tree = self.tree.tree
        return ledger_pb2.GetInclusionProofResponse(
            leaf_index=request.leaf_index,
            tree_size=size,
            leaf_hash=tree.leaf(request.leaf_index),
            proof=tree.inclusion_proof(request.leaf_index, size),
            root_hash=tree.root(size),
        )

    async def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: Any
    ) -> ledger_pb2.GetConsistencyProofResponse:
        new_size = await self._sizes(request.new_size, "new_size")
        if request.old_size > new_size:
            raise InvalidRequest(
                "bad sizes", violations=[Violation("old_size", f"must not exceed new_size {new_size}")]
            )
        tree = self.tree.tree
        return ledger_pb2.GetConsistencyProofResponse(
            old_size=request.old_size,
            new_size=new_size,
            proof=tree.consistency_proof(request.old_size, new_size),
            old_root=tree.root(request.old_size),
            new_root=tree.root(new_size),
        )

    async def GetLatestCheckpoint(
        self, request: ledger_pb2.GetLatestCheckpointRequest, context: Any
    ) -> ledger_pb2.GetLatestCheckpointResponse:
        latest = self.latest_checkpoint()
        if latest is None:
            raise NotFound("no checkpoint has been signed yet", reason=Reason.NO_CHECKPOINT)
        note, size, root = latest
        return ledger_pb2.GetLatestCheckpointResponse(checkpoint=note, tree_size=size, root_hash=root)
