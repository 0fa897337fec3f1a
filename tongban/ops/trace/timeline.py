"""One request's timeline across regions: its hops, how each region's ledger was read, the verdict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from tongban.ops.trace.details import HopDetail, read_detail
from tongban.v1 import ledger_pb2


@dataclass(frozen=True)
class TraceHop:
    """One ledger entry on the timeline of ``tongban trace``."""

    time_ns: int
    region: str
    """The region whose ledger holds the entry (and whose clock stamped it)."""
    event: str
    service_code: str
    detail: str
    peer_region: str
    message_id: str
    trace_id: str
    index: int

    @property
    def reading(self) -> HopDetail:
        """What its detail says."""
        return read_detail(self.event, self.detail)

    @property
    def failing(self) -> bool:
        return self.reading.failing


def hops_of(entries: Iterable[ledger_pb2.LedgerEntry]) -> list[TraceHop]:
    """The hops of ledger entries as Ledger.GetEntries returns them."""
    return [
        TraceHop(
            time_ns=e.time.ToNanoseconds(),
            region=e.region,
            event=e.event,
            service_code=e.service_code,
            detail=e.detail,
            peer_region=e.peer_region,
            message_id=e.message_id,
            trace_id=e.trace_id,
            index=e.index,
        )
        for e in entries
    ]


@dataclass
class RegionRead:
    """How one region's ledger was read."""

    region: str
    address: str
    """The gateway asked: the region's own, or for ``path`` relay the local gateway."""
    local: bool = False
    status: str = "ok"
    """ok, unreachable, refused, error or no-address."""
    error: str = ""
    entries: int = 0
    path: Literal["local", "relay", "direct"] = "direct"
    """local: the local gateway's own ledger; relay: through the local gateway, which read the region
    over NATS; direct: at the region's own gateway."""
    via: str = ""
    """For ``path`` relay, the region whose gateway relayed the read."""


@dataclass(frozen=True)
class Verdict:
    """Where the request ended up, in one line."""

    status: str
    """delivered, rejected, expired, dead_lettered, failed or in_transit."""
    text: str
    region: str = ""
    reason: str = ""


@dataclass
class Trace:
    """The merged timeline of one request and how each region's ledger was read."""

    query: str
    message_id: str
    case_no: str
    hops: list[TraceHop]
    regions: list[RegionRead]
    trace_ids: list[str] = field(default_factory=list)

    @property
    def failing(self) -> TraceHop | None:
        return next((h for h in self.hops if h.failing), None)
