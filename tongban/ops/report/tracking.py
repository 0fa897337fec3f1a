"""Requests, folded from ledger entries in time order (the package docstring defines them)."""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ledger.entry import Entry
from tongban.core import outcomes
from tongban.core.details import Detail, Source
from tongban.core.message_ids import message_id_time_ms

DEFAULT_HORIZON_NS: Final = 10 * 60 * 1_000_000_000
"""How long the ids of opened and refused messages are remembered (longer than a connector's
freshness window of 5 minutes plus clock skew: refusals of queries are settled from memory)."""
DEFAULT_SKEW_NS: Final = 120 * 1_000_000_000
"""How far a sender's clock (a message id's creation time) may run ahead of this region's."""

# Ledger event names (ledger.entry.Event values; compared as str).
_OPENERS: Final = frozenset({"SUBMITTED", "RECEIVED"})
_FAILURES: Final = outcomes.FAILURE_EVENTS
_CONCLUDES_SENT_QUERY: Final = frozenset({"RESPONDED", "REJECTED", "EXPIRED"})
_CONCLUDES_SENT_CASE: Final = frozenset({"STATUS", *_FAILURES})
_CONCLUDES_RECEIVED: Final = frozenset({"PROCESSED", *_FAILURES})
_DIGEST_LABEL: Final = "sha256:"
"""How a connector names an envelope without a usable message id (``sha256:`` + digest prefix)."""


class Direction(enum.StrEnum):
    OUT = "out"
    """Sent: this region asked another."""
    IN = "in"
    """Received: another region asked this one."""


class Kind(enum.StrEnum):
    QUERY = "query"
    CASE = "case"
    REFUSED = "refused"
    """Refused (or expired) before it was opened: no latency."""


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the report counts it (package docstring).

    Attributes:
        message_id: the exchange message.
        direction: sent or received.
        kind: query, case or refused.
        peer_region: the other region (``"?"`` when the refusing side could not tell).
        service_code: the catalogue code (``"?"`` likewise).
        opened_ns: when it was opened (or refused).
        concluded_ns: when it was concluded; None while pending.
        outcome: ok, failed or pending.
        reason: why it failed (empty otherwise).
    """

    message_id: str
    direction: Direction
    kind: Kind
    peer_region: str
    service_code: str
    opened_ns: int
    concluded_ns: int | None
    outcome: Outcome
    reason: str = ""

    @property
    def latency_ns(self) -> int | None:
        """Opening to conclusion; None while pending and for a refused request."""
        if self.concluded_ns is None or self.kind is Kind.REFUSED:
            return None
        return max(0, self.concluded_ns - self.opened_ns)

    def pair(self, region: str) -> str:
        """``from→to`` in the request's direction."""
        if self.direction is Direction.OUT:
            return f"{region}→{self.peer_region}"
        return f"{self.peer_region}→{region}"


# -- what an entry's detail says --------------------------------------------------------------


class DetailReading:
    """What the report takes from an entry's typed detail (:func:`read_detail`).

    The detail is decoded when a fact is first asked for: the tracker asks one or two per entry,
    on every entry of the period, and many entries need none.
    """

    __slots__ = ("_decoded", "_event", "_text")

    def __init__(self, event: str, detail: str) -> None:
        self._event, self._text = event, detail
        self._decoded: Detail | None = None

    @property
    def detail(self) -> Detail:
        if self._decoded is None:
            self._decoded = Detail.decode(self._text, event=self._event)
        return self._decoded

    @property
    def opens_case(self) -> bool:
        """For an opener: it opens a case (a SUBMITTED or RECEIVED naming its case), not a query."""
        return bool(self._text) and bool(self.detail.case_no)

    @property
    def about_case_event(self) -> bool:
        """A refusal about a case event (source EVENT): not a request's."""
        return bool(self._text) and self.detail.source == Source.EVENT

    @property
    def answered(self) -> bool:
        """For an answer: a success of the exchange (:func:`tongban.core.outcomes.answered`)."""
        return outcomes.answered(self.detail)

    @property
    def reason(self) -> str:
        """For a failure: its short reason token (:func:`tongban.core.outcomes.reason`)."""
        return outcomes.reason(self._event, self.detail)


def read_detail(e: Entry) -> DetailReading:
    """Everything the report reads from ``e.detail`` goes through here (and :class:`DetailReading`):
    the typed detail (:class:`tongban.core.details.Detail`), whichever release wrote the entry."""
    return DetailReading(str(e.event), e.detail)


def failure_reason(e: Entry) -> str:
    """A short reason token from a failure entry's detail (:func:`tongban.core.outcomes.reason`)."""
    return read_detail(e).reason


# -- the tracker ------------------------------------------------------------------------------


class RequestTracker:
    """Folds entries, in time order, into requests; pure (no I/O).

    Feed the entries of the period to :meth:`add`, which returns the requests each one concludes
    or refuses, after :meth:`warm` with those of the ``horizon_ns`` before it. What the entries
    alone cannot settle is left for the caller to look up in the ledger: :attr:`unopened` (failure
    entries that may belong to a message opened long before, see :meth:`settle_unopened`) and
    :meth:`still_open` (requests not concluded by the period's end, see :meth:`settle_open`).

    Args:
        horizon_ns: how long the ids of opened (and refused) messages are remembered, in ledger
            time: a failure whose message was created within this horizon is settled from memory.
        skew_ns: how far a message id's creation time (the sender's clock) may be ahead of this
            region's clock.
    """

    def __init__(self, *, horizon_ns: int = DEFAULT_HORIZON_NS, skew_ns: int = DEFAULT_SKEW_NS) -> None:
        self.horizon_ns, self.skew_ns = horizon_ns, skew_ns
        self._open: dict[str, Request] = {}
        self._seen: dict[str, int] = {}
        """Ids of messages opened or failed within the horizon: time of the latest such entry."""
        self._seen_order: deque[tuple[int, str]] = deque()
        self.unopened: dict[str, Entry] = {}
        """The first failure entry of each message the memory cannot settle, by message id."""

    def warm(self, e: Entry) -> None:
        """Take an entry from just before the period (time order): only remembered."""
        self._forget(e.time_ns)
        if str(e.event) in _OPENERS or _is_failure(e):
            self._remember(e)

    def add(self, e: Entry) -> list[Request]:
        """Take the next entry of the period (time order); the requests it concludes or refuses
        (none or one)."""
        self._forget(e.time_ns)
        mid, event = e.message_id, str(e.event)
        req = self._open.get(mid)
        if req is not None:
            if _concludes(req, e):
                del self._open[mid]
                self._remember(e)
                return [_conclude(req, e)]
            return []
        if event in _OPENERS:
            self._open[mid] = _opened(e)
            self._remember(e)
        elif _is_failure(e) and mid not in self._seen and mid not in self.unopened:
            if self._created_within_horizon(e):
                # Any opener or earlier failure of this message came after its creation: within
                # the horizon, so it would be remembered. None is: refused before it was opened.
                self._remember(e)
                return [refused_request(e)]
            self.unopened[mid] = e
        elif _is_failure(e):
            self._remember(e)
        return []

    def still_open(self) -> list[Request]:
        """Requests opened and not (yet) concluded, in opening order."""
        return list(self._open.values())

    @property
    def open_count(self) -> int:
        """How many requests are open."""
        return len(self._open)

    def settle_open(self, e: Entry) -> Request | None:
        """Take an entry from after the period (time order): the open request it concludes, if any
        (it is then no longer open)."""
        req = self._open.get(e.message_id)
        if req is None or not _concludes(req, e):
            return None
        del self._open[e.message_id]
        return _conclude(req, e)

    @staticmethod
    def settle_unopened(first: Entry, before: Iterable[Entry]) -> Request | None:
        """A refused request from an :attr:`unopened` failure entry, given entries of its message
        (any, in any order: those not before ``first`` are skipped); None when an opener or a failure
        came before it (its request is another one, counted where it was opened or refused)."""
        return None if any(precedes(h, first) for h in before) else refused_request(first)

    def _created_within_horizon(self, e: Entry) -> bool:
        if e.message_id.startswith(_DIGEST_LABEL):
            return True  # an envelope with no usable id, named by its digest: nothing else has this name
        created = message_created_ns(e.message_id)
        return created is not None and created - self.skew_ns >= e.time_ns - self.horizon_ns

    def _remember(self, e: Entry) -> None:
        self._seen[e.message_id] = e.time_ns
        self._seen_order.append((e.time_ns, e.message_id))

    def _forget(self, now_ns: int) -> None:
        order, seen, oldest = self._seen_order, self._seen, now_ns - self.horizon_ns
        while order and order[0][0] < oldest:
            at, mid = order.popleft()
            if seen.get(mid) == at:
                del seen[mid]


def refused_request(e: Entry) -> Request:
    """The request a failure entry refused before it was opened (no latency)."""
    return Request(
        e.message_id,
        Direction.IN if e.envelope_digest else Direction.OUT,
        Kind.REFUSED,
        e.peer_region or "?",
        e.service_code or "?",
        e.time_ns,
        e.time_ns,
        Outcome.FAILED,
        failure_reason(e),
    )


def precedes(h: Entry, first: Entry) -> bool:
    """Whether ``h`` is an opener or a failure of ``first``'s message before it."""
    return (
        h.message_id == first.message_id
        and (h.time_ns, h.index) < (first.time_ns, first.index)
        and (str(h.event) in _OPENERS or _is_failure(h))
    )


def message_created_ns(message_id: str) -> int | None:
    """Creation time (ns) of a message id, a ULID; None when it is not one."""
    ms = message_id_time_ms(message_id)
    return None if ms is None else ms * 1_000_000


def _opened(e: Entry) -> Request:
    direction = Direction.OUT if str(e.event) == "SUBMITTED" else Direction.IN
    kind = Kind.CASE if read_detail(e).opens_case else Kind.QUERY
    return Request(
        e.message_id, direction, kind, e.peer_region, e.service_code, e.time_ns, None, Outcome.PENDING
    )


def _concludes(req: Request, e: Entry) -> bool:
    if req.direction is Direction.IN:
        return str(e.event) in _CONCLUDES_RECEIVED
    return str(e.event) in (_CONCLUDES_SENT_CASE if req.kind is Kind.CASE else _CONCLUDES_SENT_QUERY)


def _conclude(req: Request, e: Entry) -> Request:
    event, reading = str(e.event), read_detail(e)
    ok = event == "STATUS" or (event in outcomes.ANSWER_EVENTS and reading.answered)
    return dataclasses.replace(
        req,
        concluded_ns=e.time_ns,
        outcome=Outcome.OK if ok else Outcome.FAILED,
        reason="" if ok else reading.reason,
    )


def _is_failure(e: Entry) -> bool:
    """A failure entry that may be a request's: not one about a case event (``EVENT: ...``)."""
    return str(e.event) in _FAILURES and not read_detail(e).about_case_event
