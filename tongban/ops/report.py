"""Exchange reports: volumes, success rates, latencies and 堵点 of one region's ledger over a period.

A report reads only the region's own ledger (no other region, no metrics back end): what the gateway
and the connector recorded, as written in ``gateway/exchange.py``, ``gateway/submit.py``,
``connectors/runtime.py`` and ``connectors/cases.py``.

Definitions:

* A **request** is one exchange message (one message id) seen from this region, in one of three kinds:

  - *sent* (direction ``out``: this region asked, its gateway wrote the entries), opened by
    ``SUBMITTED``. A query (``SUBMITTED`` without detail) is concluded by its first ``RESPONDED``,
    ``REJECTED`` or ``EXPIRED``; a case (``SUBMITTED`` with the case number as detail) by its first
    ``STATUS`` (the handling region's first answer), ``REJECTED``, ``EXPIRED`` or ``DEAD_LETTERED``.
    Later statuses of a case (办结 days later) are the handling region's work, not the exchange's.
  - *received* (direction ``in``: this region answered, its connector wrote the entries), opened by
    its first ``RECEIVED`` (a redelivered case opens once), concluded by its first ``PROCESSED``,
    ``REJECTED``, ``EXPIRED`` or ``DEAD_LETTERED``.
  - *refused*: a ``REJECTED``, ``EXPIRED`` or ``DEAD_LETTERED`` of a message with no ``SUBMITTED``,
    ``RECEIVED`` or failure entry before it in the ledger: refused before it was opened (a second
    refusal of the same message is not another request). Without an envelope digest the gateway
    refused a partner's call before sealing it (``out``); with one the connector refused an
    envelope it could not verify or open (``in``). It has no latency. ``REJECTED`` entries about
    case events (detail ``EVENT: ...``) are not requests.

* **Outcome**: *ok* when concluded by ``RESPONDED``/``PROCESSED`` with detail ``OK`` or
  ``NOT_FOUND`` (the back end answered that it holds no record: an answer, not a failure), by a
  case's ``PROCESSED`` (detail ``case=...`` without a reason) or by a sent case's first ``STATUS``;
  *failed* when concluded otherwise (the reason is taken from the detail, e.g. ``BACKEND_TIMEOUT``,
  ``NO_RESPONDERS``, ``REMOTE:NOT_AUTHORISED``); *pending* while not concluded.
* **Success rate** = ok / (ok + failed); pending requests are not in it.
* **Latency** = conclusion ``time_ns`` - opening ``time_ns``, both stamped by this region (one clock):
  for a sent query the caller's wait (SUBMITTED→RESPONDED), for a sent case the time to the handling
  region's first answer, for a received request the connector's work including retries
  (RECEIVED→PROCESSED). Failed requests count too (an expiry is a long wait). Percentiles are by
  nearest rank: p-th = the smallest latency L with at least p % of the latencies <= L.
* **Period**: a request belongs to the period in which it was opened (refused: in which it was
  refused). Its outcome is the one known when the report runs: a conclusion after the period's end
  is looked up. Periods are whole days in Beijing time (UTC+8, no daylight saving): ``week`` is today
  and the 6 days before, ``month``/``quarter``/``year`` start the day after the same date 1/3/12
  months ago; all end now.
* **Pairs** are directed: ``from→to`` in the request's direction.
* **堵点**: among services and pairs with at least ``min_requests`` requests, the slowest (by p90,
  then p99) and the most failing (by failure rate, then failures).
* **Buckets** of the volume series: days for periods up to 31 days, weeks (from Monday) up to 92,
  calendar months beyond.

The ledger is read in time order by :meth:`~ledger.store.LedgerStore.by_time` in chunks, in a few
ranges (:func:`collect`): the minutes before the period, the period, and after it only while requests
are still open; a look-up by message id only for the few failures that range reads cannot settle. What
is held is the open requests, the ids of messages opened or refused in the last minutes (ledger time),
the failures waiting to be settled, and counters and latencies (8 bytes a request and group) per group,
never the period's entries or concluded requests.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import math
import re
import time
import unicodedata
from array import array
from collections import Counter, deque
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tongban.core import outcomes
from tongban.core.message_ids import is_message_id

if TYPE_CHECKING:
    # Only types: the core package stays importable without the ledger package (tongban/ops/cli.py).
    from ledger.entry import Entry
    from ledger.store import LedgerStore


__all__ = [
    "BEIJING",
    "Bucket",
    "BucketSize",
    "Direction",
    "Kind",
    "Outcome",
    "Period",
    "Report",
    "ReportBuilder",
    "Request",
    "RequestTracker",
    "Row",
    "Stats",
    "Window",
    "build_report",
    "collect",
    "display_width",
    "dumps",
    "failure_reason",
    "parse_when",
    "percentile",
    "period_window",
    "read_window",
    "render_text",
    "table",
    "to_json",
    "window_between",
    "write_chart",
]

BEIJING: Final = dt.timezone(dt.timedelta(hours=8), "UTC+8")
"""China's one time zone, without daylight saving: days, weeks and months of a report are Beijing's."""

DEFAULT_CHUNK: Final = 5000
"""Entries read from the ledger at once."""
DEFAULT_HORIZON_NS: Final = 10 * 60 * 1_000_000_000
"""How long the ids of opened and refused messages are remembered (longer than a connector's
freshness window of 5 minutes plus clock skew: refusals of queries are settled from memory)."""
DEFAULT_SKEW_NS: Final = 120 * 1_000_000_000
"""How far a sender's clock (a message id's creation time) may run ahead of this region's."""
DEFAULT_LOOKUPS: Final = 64
"""At most this many failures are settled by a look-up each; more by one read of the ledger."""

_NS: Final = 1_000_000_000
_DAY_NS: Final = 86_400 * _NS
# Ledger event names (ledger.entry.Event values; compared as str).
_OPENERS: Final = frozenset({"SUBMITTED", "RECEIVED"})
_FAILURES: Final = outcomes.FAILURE_EVENTS
_CONCLUDES_SENT_QUERY: Final = frozenset({"RESPONDED", "REJECTED", "EXPIRED"})
_CONCLUDES_SENT_CASE: Final = frozenset({"STATUS", *_FAILURES})
_CONCLUDES_RECEIVED: Final = frozenset({"PROCESSED", *_FAILURES})
_DIGEST_LABEL: Final = "sha256:"
"""How a connector names an envelope without a usable message id (``sha256:`` + digest prefix)."""
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Digits of a message id (tongban.core.message_ids: Crockford base32)."""
_NUMBER: Final = re.compile(r"-|[0-9][0-9.,]*(?: ?(?:%|ms|s|min|h))?")
"""A table cell aligned to the right: a count, a rate or a duration (``-`` when there is none)."""


class Period(enum.StrEnum):
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


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


class BucketSize(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


# -- the period -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The half-open time range ``[start_ns, end_ns)`` a report covers.

    Attributes:
        start_ns: first nanosecond (Unix epoch).
        end_ns: first nanosecond after the period.
        label: ``week``, ``month``, ... or ``custom``.
        tz: the time zone of days, weeks and months.
    """

    start_ns: int
    end_ns: int
    label: str
    tz: dt.tzinfo = BEIJING

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError("a report's period must end after it starts")

    @property
    def bucket_size(self) -> BucketSize:
        """Days up to 31 days, weeks up to 92, months beyond."""
        days = (self.end_ns - self.start_ns) / _DAY_NS
        if days <= 31:
            return BucketSize.DAY
        return BucketSize.WEEK if days <= 92 else BucketSize.MONTH

    def boundaries(self) -> list[int]:
        """Start (ns) of each bucket; the first is ``start_ns``, the last starts before ``end_ns``."""
        size = self.bucket_size
        first = _local(self.start_ns, self.tz).date()
        if size is BucketSize.WEEK:
            first -= dt.timedelta(days=first.weekday())
        elif size is BucketSize.MONTH:
            first = first.replace(day=1)
        starts = [self.start_ns]
        day = first
        while True:
            day = _next_bucket(day, size)
            ns = _midnight_ns(day, self.tz)
            if ns >= self.end_ns:
                return starts
            starts.append(ns)


def period_window(period: Period | str, *, now_ns: int | None = None, tz: dt.tzinfo = BEIJING) -> Window:
    """The period ending now: whole local days, the current one up to now (see the module docstring)."""
    period = Period(period)
    now_ns = time.time_ns() if now_ns is None else now_ns
    today = _local(now_ns, tz).date()
    if period is Period.WEEK:
        first = today - dt.timedelta(days=6)
    else:
        months = {Period.MONTH: 1, Period.QUARTER: 3, Period.YEAR: 12}[period]
        first = _add_months(today, -months) + dt.timedelta(days=1)
    return Window(_midnight_ns(first, tz), now_ns, period.value, tz)


def parse_when(text: str, tz: dt.tzinfo = BEIJING) -> int:
    """An ISO date (local midnight) or date-time (local unless it names an offset), in ns.

    Raises:
        ValueError: not an ISO date or date-time.
    """
    text = text.strip()
    if len(text) == 10:
        return _midnight_ns(dt.date.fromisoformat(text), tz)
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return _to_ns(when)


def window_between(
    since: str, until: str = "", *, now_ns: int | None = None, tz: dt.tzinfo = BEIJING
) -> Window:
    """``[since, until)`` from ISO dates or date-times; an empty ``until`` is now."""
    end = parse_when(until, tz) if until else (time.time_ns() if now_ns is None else now_ns)
    return Window(parse_when(since, tz), end, "custom", tz)


# -- requests, from entries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the report counts it (module docstring).

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


def _opened(e: Entry) -> Request:
    if str(e.event) == "SUBMITTED":
        direction, kind = Direction.OUT, (Kind.CASE if e.detail else Kind.QUERY)
    else:
        direction, kind = Direction.IN, (Kind.CASE if e.detail.startswith("case=") else Kind.QUERY)
    return Request(
        e.message_id, direction, kind, e.peer_region, e.service_code, e.time_ns, None, Outcome.PENDING
    )


def _concludes(req: Request, e: Entry) -> bool:
    if req.direction is Direction.IN:
        return str(e.event) in _CONCLUDES_RECEIVED
    return str(e.event) in (_CONCLUDES_SENT_CASE if req.kind is Kind.CASE else _CONCLUDES_SENT_QUERY)


def _conclude(req: Request, e: Entry) -> Request:
    event = str(e.event)
    ok = event == "STATUS" or (event in outcomes.ANSWER_EVENTS and outcomes.answered(e.detail))
    return dataclasses.replace(
        req,
        concluded_ns=e.time_ns,
        outcome=Outcome.OK if ok else Outcome.FAILED,
        reason="" if ok else failure_reason(e),
    )


def failure_reason(e: Entry) -> str:
    """A short reason token from a failure entry's detail (:func:`tongban.core.outcomes.reason`)."""
    return outcomes.reason(str(e.event), e.detail)


def _refused(e: Entry) -> Request:
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
                return [_refused(e)]
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
        return None if any(_precedes(h, first) for h in before) else _refused(first)

    def _created_within_horizon(self, e: Entry) -> bool:
        if e.message_id.startswith(_DIGEST_LABEL):
            return True  # an envelope with no usable id, named by its digest: nothing else has this name
        created = _message_id_ns(e.message_id)
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


def _precedes(h: Entry, first: Entry) -> bool:
    """Whether ``h`` is an opener or a failure of ``first``'s message before it."""
    return (
        h.message_id == first.message_id
        and (h.time_ns, h.index) < (first.time_ns, first.index)
        and (str(h.event) in _OPENERS or _is_failure(h))
    )


def _is_failure(e: Entry) -> bool:
    """A failure entry that may be a request's: not one about a case event (``EVENT: ...``)."""
    return str(e.event) in _FAILURES and not e.detail.startswith("EVENT:")


def _message_id_ns(message_id: str) -> int | None:
    """Creation time of a message id (a ULID: 48-bit milliseconds first, as tongban.core.message_ids
    makes them),
    or None when it is not one."""
    if not is_message_id(message_id):
        return None
    ms = 0
    for ch in message_id[:10]:
        ms = ms * 32 + _CROCKFORD.index(ch)
    return ms * 1_000_000


async def read_window(
    store: LedgerStore, start_ns: int, end_ns: int, *, chunk: int = DEFAULT_CHUNK
) -> AsyncGenerator[Entry, None]:
    """The entries with ``start_ns <= time_ns < end_ns`` in (time, index) order, read ``chunk`` at a
    time: never the whole range at once."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    lo, limit = start_ns, chunk
    while True:
        batch = await store.by_time(lo, end_ns, limit)
        batch.sort(key=lambda e: (e.time_ns, e.index))
        if len(batch) < limit:
            for e in batch:
                yield e
            return
        # A full batch may cut a nanosecond's entries in two: hold back its last nanosecond and
        # read it again with the next batch.
        last = batch[-1].time_ns
        done = [e for e in batch if e.time_ns < last]
        if not done:
            limit *= 2  # one nanosecond holds more than a batch: widen until it fits
            continue
        for e in done:
            yield e
        lo, limit = last, chunk


# -- statistics -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], p: float) -> int | None:
    """Nearest-rank percentile of ascending values: the smallest v with at least p % of values <= v."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p * len(sorted_values) / 100))  # p * n first: exact for whole p
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts and latencies of a group of requests (latencies in milliseconds).

    Attributes:
        requests: all requests of the group.
        ok: concluded ok.
        failed: concluded failed (refused included).
        pending: not concluded.
        success_rate: ok / (ok + failed), None when nothing concluded.
        p50_ms: median latency, None without latencies; likewise ``p90_ms`` and ``p99_ms``.
        reasons: failure reasons, most frequent first.
    """

    requests: int
    ok: int
    failed: int
    pending: int
    success_rate: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    reasons: tuple[tuple[str, int], ...] = ()

    @property
    def failure_rate(self) -> float | None:
        return None if self.success_rate is None else 1.0 - self.success_rate


@dataclass(frozen=True, slots=True)
class Row:
    """A group's statistics: ``key`` is a direction, a service code or a ``from→to`` pair."""

    key: str
    stats: Stats
    direction: str = ""


@dataclass(frozen=True, slots=True)
class Bucket:
    """Volume of one day, week or month (by opening time)."""

    start_ns: int
    label: str
    requests: int
    ok: int
    failed: int
    pending: int


@dataclass(frozen=True)
class Report:
    """A region's exchange over a period; build it with :func:`build_report` or :func:`collect`.

    Attributes:
        region: the ledger's region.
        window: the period.
        generated_ns: when the report was made.
        total: every request of the period.
        directions: sent and received.
        services: by direction and service code, by volume.
        pairs: by ``from→to`` region pair, by volume.
        slowest_services: 堵点 by latency; likewise ``slowest_pairs``.
        failing_services: 堵点 by failure rate; likewise ``failing_pairs``.
        buckets: volume per day, week or month.
        min_requests: the smallest group the 堵点 lists consider.
    """

    region: str
    window: Window
    generated_ns: int
    total: Stats
    directions: tuple[Row, ...]
    services: tuple[Row, ...]
    pairs: tuple[Row, ...]
    slowest_services: tuple[Row, ...]
    slowest_pairs: tuple[Row, ...]
    failing_services: tuple[Row, ...]
    failing_pairs: tuple[Row, ...]
    buckets: tuple[Bucket, ...]
    min_requests: int


@dataclass
class _Acc:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    pending: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, r: Request) -> None:
        self.requests += 1
        if r.outcome is Outcome.OK:
            self.ok += 1
        elif r.outcome is Outcome.FAILED:
            self.failed += 1
            self.reasons[r.reason] += 1
        else:
            self.pending += 1
        if (lat := r.latency_ns) is not None:
            self.latencies.append(lat)

    def stats(self) -> Stats:
        lat = sorted(self.latencies)
        done = self.ok + self.failed

        def ms(p: float) -> float | None:
            v = percentile(lat, p)
            return None if v is None else v / 1e6

        return Stats(
            self.requests,
            self.ok,
            self.failed,
            self.pending,
            self.ok / done if done else None,
            ms(50),
            ms(90),
            ms(99),
            tuple(self.reasons.most_common()),
        )


class ReportBuilder:
    """Aggregates requests one at a time (any order, each once) into a :class:`Report`; pure.

    Holds counters and latencies per group, never the requests themselves.
    """

    def __init__(self, region: str, window: Window) -> None:
        self.region, self.window = region, window
        self._total, self._dirs = _Acc(), {d: _Acc() for d in Direction}
        self._services: dict[tuple[Direction, str], _Acc] = {}
        self._pairs: dict[str, _Acc] = {}
        self._starts = window.boundaries()
        self._buckets = [_Acc() for _ in self._starts]

    def add(self, r: Request) -> None:
        self._total.add(r)
        self._dirs[r.direction].add(r)
        self._services.setdefault((r.direction, r.service_code), _Acc()).add(r)
        self._pairs.setdefault(r.pair(self.region), _Acc()).add(r)
        self._buckets[max(0, bisect.bisect_right(self._starts, r.opened_ns) - 1)].add(r)

    def build(self, *, top: int = 5, min_requests: int = 5, generated_ns: int | None = None) -> Report:
        """The report of the requests added so far: 堵点 lists of at most ``top`` groups of at least
        ``min_requests`` requests."""
        svc_rows = _by_volume(Row(svc, acc.stats(), str(d)) for (d, svc), acc in self._services.items())
        pair_rows = _by_volume(Row(pair, acc.stats()) for pair, acc in self._pairs.items())
        w = self.window
        return Report(
            region=self.region,
            window=w,
            generated_ns=time.time_ns() if generated_ns is None else generated_ns,
            total=self._total.stats(),
            directions=tuple(Row(str(d), self._dirs[d].stats(), str(d)) for d in Direction),
            services=svc_rows,
            pairs=pair_rows,
            slowest_services=_slowest(svc_rows, top, min_requests),
            slowest_pairs=_slowest(pair_rows, top, min_requests),
            failing_services=_failing(svc_rows, top, min_requests),
            failing_pairs=_failing(pair_rows, top, min_requests),
            buckets=tuple(
                Bucket(s, _bucket_label(s, w), a.requests, a.ok, a.failed, a.pending)
                for s, a in zip(self._starts, self._buckets, strict=True)
            ),
            min_requests=min_requests,
        )


def build_report(
    region: str,
    window: Window,
    requests: Iterable[Request],
    *,
    top: int = 5,
    min_requests: int = 5,
    generated_ns: int | None = None,
) -> Report:
    """Aggregate a period's requests (any order, each once) into a report; pure."""
    builder = ReportBuilder(region, window)
    for r in requests:
        builder.add(r)
    return builder.build(top=top, min_requests=min_requests, generated_ns=generated_ns)


def _by_volume(rows: Iterable[Row]) -> tuple[Row, ...]:
    return tuple(sorted(rows, key=lambda r: (-r.stats.requests, r.direction, r.key)))


def _slowest(rows: Sequence[Row], top: int, min_requests: int) -> tuple[Row, ...]:
    timed = [r for r in rows if r.stats.requests >= min_requests and r.stats.p90_ms is not None]
    timed.sort(key=lambda r: (-(r.stats.p90_ms or 0.0), -(r.stats.p99_ms or 0.0), r.key))
    return tuple(timed[:top])


def _failing(rows: Sequence[Row], top: int, min_requests: int) -> tuple[Row, ...]:
    bad = [r for r in rows if r.stats.requests >= min_requests and r.stats.failed]
    bad.sort(key=lambda r: (-(r.stats.failure_rate or 0.0), -r.stats.failed, r.key))
    return tuple(bad[:top])


async def collect(
    store: LedgerStore,
    window: Window,
    *,
    top: int = 5,
    min_requests: int = 5,
    now_ns: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    horizon_ns: int = DEFAULT_HORIZON_NS,
    skew_ns: int = DEFAULT_SKEW_NS,
    lookups: int = DEFAULT_LOOKUPS,
) -> Report:
    """The report of ``store``'s ledger over ``window`` as known at ``now_ns`` (default: now).

    The ledger is read in time order, ``chunk`` entries at a time (:func:`read_window`), in at most
    four ranges, never one query per request:

    1. ``horizon_ns`` before the period, only to remember which messages were opened or failed
       there (a failure in the period of a request opened just before it is not a refusal).
    2. The period: requests are opened and concluded; a failure entry of a message not open is a
       refusal when its message id (a ULID, which carries its creation time) was created within
       ``horizon_ns`` (less ``skew_ns``) of it and the tracker remembers no opener or failure of it:
       an earlier entry of the message would be at most that old. The refusals a flood of calls
       produces (the gateway's, within milliseconds of the id; a connector's, within its freshness
       window) are all settled so.
    3. The rest, failures of messages created before the horizon (a case dead-lettered after hours
       of retries, one refused when it arrived days late, a request opened before the period), are
       settled by one look-up by message id each when there are at most ``lookups`` of them, else
       by one read from the earliest one's creation (less ``skew_ns``) to the last of them.
    4. When the period ended before ``now_ns`` and requests are still open: from the period's end
       to ``now_ns``, until every one is concluded (a conclusion after the period counts).

    Args:
        store: the region's ledger.
        window: the period.
        top: entries in each 堵点 list.
        min_requests: the smallest group the 堵点 lists consider.
        now_ns: what "now" is: the period's end for a period that ends now (one clock for both,
            so no read after it), and the report's generation time.
        chunk: entries read at once.
        horizon_ns: how long ids are remembered (memory: the ids of messages opened or failed
            within it, besides the open requests).
        skew_ns: how far a sender's clock may run ahead.
        lookups: the most failures settled by look-ups by message id.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    tracker = RequestTracker(horizon_ns=horizon_ns, skew_ns=skew_ns)
    builder = ReportBuilder(store.region, window)
    async for e in read_window(store, window.start_ns - horizon_ns, window.start_ns, chunk=chunk):
        tracker.warm(e)
    async for e in read_window(store, window.start_ns, window.end_ns, chunk=chunk):
        for req in tracker.add(e):
            builder.add(req)
    for settled in await _settle_unopened(store, tracker, skew_ns=skew_ns, lookups=lookups, chunk=chunk):
        builder.add(settled)
    if window.end_ns < now_ns and tracker.open_count:
        async with contextlib.aclosing(read_window(store, window.end_ns, now_ns, chunk=chunk)) as later:
            async for e in later:
                if (concluded := tracker.settle_open(e)) is not None:
                    builder.add(concluded)
                    if not tracker.open_count:
                        break
    for req in tracker.still_open():
        builder.add(req)
    return builder.build(top=top, min_requests=min_requests, generated_ns=now_ns)


async def _settle_unopened(
    store: LedgerStore, tracker: RequestTracker, *, skew_ns: int, lookups: int, chunk: int
) -> list[Request]:
    """The refused requests among the tracker's unopened failures (:func:`collect`, step 3)."""
    firsts = list(tracker.unopened.values())
    created = {e.message_id: _message_id_ns(e.message_id) for e in firsts}
    # Ids that are not ULIDs carry no time to bound a read by: looked up whatever their number.
    by_id = [e for e in firsts if created[e.message_id] is None]
    timed = [e for e in firsts if created[e.message_id] is not None]
    if len(by_id) + len(timed) <= lookups:
        by_id, timed = by_id + timed, []
    out = []
    for first in by_id:
        history = await store.by_message_id(first.message_id)
        if (settled := tracker.settle_unopened(first, history)) is not None:
            out.append(settled)
    if timed:
        pending = {e.message_id: e for e in timed}
        earlier: set[str] = set()
        lo = min(ns for e in timed if (ns := created[e.message_id]) is not None) - skew_ns
        hi = max(e.time_ns for e in timed)
        async for h in read_window(store, lo, hi + 1, chunk=chunk):
            failed = pending.get(h.message_id)
            if failed is not None and _precedes(h, failed):
                earlier.add(h.message_id)
        out += [_refused(e) for e in timed if e.message_id not in earlier]
    return out


# -- output -----------------------------------------------------------------------------------


def to_json(report: Report, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (latencies in ms, times in ISO 8601 with offset)."""
    names = names or {}
    w = report.window

    def row(r: Row, *, service: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"key": r.key}
        if r.direction:
            d["direction"] = r.direction
        if service:
            d["name"] = names.get(r.key, "")
        return d | _stats_json(r.stats)

    return {
        "region": report.region,
        "period": {
            "label": w.label,
            "since": _iso(w.start_ns, w.tz),
            "until": _iso(w.end_ns, w.tz),
            "bucket": str(w.bucket_size),
        },
        "generated_at": _iso(report.generated_ns, w.tz),
        "min_requests": report.min_requests,
        "total": _stats_json(report.total),
        "directions": [row(r, service=False) for r in report.directions],
        "services": [row(r, service=True) for r in report.services],
        "pairs": [row(r, service=False) for r in report.pairs],
        "bottlenecks": {
            "slowest_services": [row(r, service=True) for r in report.slowest_services],
            "slowest_pairs": [row(r, service=False) for r in report.slowest_pairs],
            "failing_services": [row(r, service=True) for r in report.failing_services],
            "failing_pairs": [row(r, service=False) for r in report.failing_pairs],
        },
        "buckets": [
            {
                "start": _iso(b.start_ns, w.tz),
                "label": b.label,
                "requests": b.requests,
                "ok": b.ok,
                "failed": b.failed,
                "pending": b.pending,
            }
            for b in report.buckets
        ],
    }


def _stats_json(s: Stats) -> dict[str, Any]:
    return {
        "requests": s.requests,
        "ok": s.ok,
        "failed": s.failed,
        "pending": s.pending,
        "success_rate": s.success_rate,
        "latency_ms": {"p50": s.p50_ms, "p90": s.p90_ms, "p99": s.p99_ms},
        "failure_reasons": dict(s.reasons),
    }


def render_text(report: Report, names: Mapping[str, str] | None = None, *, rows: int = 20) -> str:
    """The report as aligned text tables (CJK characters count two columns).

    Args:
        report: the report.
        names: catalogue item names by service code.
        rows: at most this many rows in the service and pair tables (the biggest by volume).
    """
    names = names or {}
    w, t = report.window, report.total
    out = [
        f"tongban exchange report · region {report.region} · {_period_name(w)} (UTC+8)",
        f"requests {t.requests} · ok {t.ok} · failed {t.failed} · pending {t.pending} · "
        f"success {_rate(t.success_rate)} · latency p50 {_dur(t.p50_ms)} p90 {_dur(t.p90_ms)} "
        f"p99 {_dur(t.p99_ms)}",
    ]
    stat_head = ["requests", "ok", "failed", "pending", "success", "p50", "p90", "p99"]

    def stat_cells(s: Stats) -> list[str]:
        return [
            str(s.requests),
            str(s.ok),
            str(s.failed),
            str(s.pending),
            _rate(s.success_rate),
            _dur(s.p50_ms),
            _dur(s.p90_ms),
            _dur(s.p99_ms),
        ]

    label = {"out": "sent 发出", "in": "received 接收"}
    out += _section(
        "By direction",
        ["direction", *stat_head],
        [[label[r.key], *stat_cells(r.stats)] for r in report.directions],
    )
    out += _section(
        "By service 按事项",
        ["dir", "service", "name", *stat_head],
        [[r.direction, r.key, names.get(r.key, ""), *stat_cells(r.stats)] for r in report.services[:rows]],
        more=len(report.services) - rows,
    )
    out += _section(
        "By region pair 按地区",
        ["pair", *stat_head],
        [[r.key, *stat_cells(r.stats)] for r in report.pairs[:rows]],
        more=len(report.pairs) - rows,
    )
    slow = [
        ["service", f"{r.direction} {r.key}", names.get(r.key, ""), *_slow_cells(r.stats)]
        for r in report.slowest_services
    ] + [["pair", r.key, "", *_slow_cells(r.stats)] for r in report.slowest_pairs]
    out += _section(
        f"堵点 · slowest (by p90; groups of ≥ {report.min_requests} requests)",
        ["by", "key", "name", "requests", "p50", "p90", "p99"],
        slow,
    )
    failing = [
        ["service", f"{r.direction} {r.key}", names.get(r.key, ""), *_fail_cells(r.stats)]
        for r in report.failing_services
    ] + [["pair", r.key, "", *_fail_cells(r.stats)] for r in report.failing_pairs]
    out += _section(
        f"堵点 · most failing (by failure rate; groups of ≥ {report.min_requests} requests)",
        ["by", "key", "name", "requests", "failed", "failure", "top reason"],
        failing,
    )
    out += _section(
        "Failure reasons",
        ["reason", "count", "share"],
        [[k, str(n), _rate(n / t.failed)] for k, n in t.reasons[:rows]],
    )
    peak = max((b.requests for b in report.buckets), default=0)
    out += _section(
        f"Volume by {w.bucket_size}",
        [str(w.bucket_size), "requests", "ok", "failed", "pending", "failure", ""],
        [
            [
                b.label,
                str(b.requests),
                str(b.ok),
                str(b.failed),
                str(b.pending),
                _rate(b.failed / (b.ok + b.failed) if b.ok + b.failed else None),
                "#" * (round(30 * b.requests / peak) if peak else 0),
            ]
            for b in report.buckets
        ],
    )
    return "\n".join(out) + "\n"


def _slow_cells(s: Stats) -> list[str]:
    return [str(s.requests), _dur(s.p50_ms), _dur(s.p90_ms), _dur(s.p99_ms)]


def _fail_cells(s: Stats) -> list[str]:
    top = f"{s.reasons[0][0]} ×{s.reasons[0][1]}" if s.reasons else ""
    return [str(s.requests), str(s.failed), _rate(s.failure_rate), top]


def _section(title: str, head: list[str], body: list[list[str]], *, more: int = 0) -> list[str]:
    lines = ["", title]
    if not body:
        return [*lines, "  (none)"]
    lines += table(head, body)
    if more > 0:
        lines.append(f"  … {more} more")
    return lines


def display_width(text: str) -> int:
    """Columns a terminal gives ``text``: wide and full-width characters (CJK) take two."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


def table(head: Sequence[str], body: Sequence[Sequence[str]], *, indent: str = "  ") -> list[str]:
    """Aligned rows: numeric-looking columns to the right, text to the left."""
    cols = len(head)
    widths = [max(display_width(r[i]) for r in [head, *body]) for i in range(cols)]
    numeric = [all(_numeric(r[i]) for r in body) for i in range(cols)]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, c in enumerate(cells):
            pad = " " * (widths[i] - display_width(c))
            parts.append(pad + c if numeric[i] else c + pad)
        return (indent + "  ".join(parts)).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(r) for r in body)]


def _numeric(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


# -- the chart --------------------------------------------------------------------------------


def write_chart(report: Report, path: str | Path) -> Path:
    """Draw the report for a briefing: volume per bucket with the failure share, and the 堵点.

    The format follows the suffix: ``.png`` or ``.svg`` (text kept as text). Labels are ASCII
    (service codes, region codes): matplotlib's bundled fonts have no CJK glyphs.

    Raises:
        ValueError: the suffix is neither ``.png`` nor ``.svg``.
    """
    import matplotlib
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"chart file must end in .png or .svg, not {path.name!r}")
    w, t = report.window, report.total
    with matplotlib.rc_context(
        {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    ):
        # Fixed margins: a constrained layout would cost a second full draw, and the labels are short.
        fig = Figure(figsize=(12, 7.5), dpi=110)
        grid = fig.add_gridspec(
            2,
            2,
            height_ratios=(1.1, 1),
            left=0.14,
            right=0.94,
            top=0.88,
            bottom=0.08,
            hspace=0.42,
            wspace=0.5,
        )
        vol = fig.add_subplot(grid[0, :])
        slow = fig.add_subplot(grid[1, 0])
        fail = fig.add_subplot(grid[1, 1])
        fig.suptitle(
            f"tongban exchange report - region {report.region} - {_period_name(w)} (UTC+8)",
            fontsize=13,
            fontweight="bold",
        )
        _volume_axes(vol, report)
        vol.set_title(
            f"{t.requests} requests, success {_rate(t.success_rate)}, latency p50 "
            f"{_dur(t.p50_ms)} / p90 {_dur(t.p90_ms)} / p99 {_dur(t.p99_ms)}",
            loc="left",
            fontsize=10,
        )
        _slowest_axes(slow, report)
        _failing_axes(fail, report)
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return path


def _volume_axes(ax: Any, report: Report) -> None:
    from matplotlib.ticker import MaxNLocator

    b = report.buckets
    x = list(range(len(b)))
    ok = [v.ok for v in b]
    failed = [v.failed for v in b]
    pending = [v.pending for v in b]
    ax.bar(x, ok, color="#4c9f70", label="ok")
    ax.bar(x, failed, bottom=ok, color="#d1495b", label="failed")
    ax.bar(
        x, pending, bottom=[o + f for o, f in zip(ok, failed, strict=True)], color="#b8b8b8", label="pending"
    )
    ax.set_ylabel(f"requests per {report.window.bucket_size}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    step = max(1, math.ceil(len(b) / 16))
    ax.set_xticks(x[::step], [v.label for v in b][::step])
    ax.set_xlim(-0.6, len(b) - 0.4)
    share = ax.twinx()
    share.spines["right"].set_visible(True)
    rates = [100 * v.failed / (v.ok + v.failed) if v.ok + v.failed else float("nan") for v in b]
    share.plot(x, rates, color="#8b1e3f", marker="o", linewidth=1.5, label="failure share")
    share.set_ylabel("failure share (%)")
    share.set_ylim(0, max([10.0, *(r for r in rates if not math.isnan(r))]) * 1.1)
    handles = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    # Above the plot, right: inside it would cover the bars of the first days.
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, ncols=4)


def _ranked(ax: Any, services: Sequence[Row], pairs: Sequence[Row]) -> list[tuple[float, Row]]:
    """Services above pairs, each list in rank order from the top, a gap between: (y, row) pairs,
    with the y tick labels set (ASCII: ``out CODE`` and ``from->to``)."""
    placed: list[tuple[float, str, Row]] = []
    y = 0.0
    for group, label in ((pairs, _pair_label), (services, _service_label)):
        for r in reversed(group):
            placed.append((y, label(r), r))
            y += 1
        y += 0.6 if group else 0.0
    ax.set_yticks([p[0] for p in placed], [p[1] for p in placed], fontfamily="monospace")
    return [(p[0], p[2]) for p in placed]


def _service_label(r: Row) -> str:
    return f"{r.direction} {r.key}"


def _pair_label(r: Row) -> str:
    return r.key.replace("→", "->")


def _slowest_axes(ax: Any, report: Report) -> None:
    ax.set_title(f"slowest: latency p50 / p90 (groups of >= {report.min_requests})", loc="left", fontsize=10)
    if not (report.slowest_services or report.slowest_pairs):
        ax.text(0.5, 0.5, "no group large enough", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    placed = _ranked(ax, report.slowest_services, report.slowest_pairs)
    y = [p[0] for p in placed]
    p90 = [(r.stats.p90_ms or 0.0) / 1000 for _, r in placed]
    ax.barh(y, p90, color="#edae49", label="p90")
    ax.barh(y, [(r.stats.p50_ms or 0.0) / 1000 for _, r in placed], height=0.45, color="#00798c", label="p50")
    for yi, v in zip(y, p90, strict=True):
        ax.text(v, yi, f" {_dur(v * 1000)}", va="center", fontsize=8)
    ax.set_xlabel("latency (s)")
    ax.margins(x=0.2)
    ax.legend(loc="best", frameon=False)


def _failing_axes(ax: Any, report: Report) -> None:
    ax.set_title(f"most failing: failure rate (groups of >= {report.min_requests})", loc="left", fontsize=10)
    if not (report.failing_services or report.failing_pairs):
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    placed = _ranked(ax, report.failing_services, report.failing_pairs)
    rates = [100 * (r.stats.failure_rate or 0.0) for _, r in placed]
    ax.barh([p[0] for p in placed], rates, color="#d1495b")
    for (yi, r), v in zip(placed, rates, strict=True):
        reason = r.stats.reasons[0][0] if r.stats.reasons else ""
        concluded = r.stats.ok + r.stats.failed  # the rate's denominator: pending ones are not in it
        ax.text(v, yi, f" {r.stats.failed}/{concluded} {reason}", va="center", fontsize=8)
    ax.set_xlabel("failure rate (%)")
    ax.set_xlim(0, min(100.0, max(rates) * 1.7))


# -- small helpers ----------------------------------------------------------------------------


def _local(ns: int, tz: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // _NS, tz)


def _to_ns(when: dt.datetime) -> int:
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000


def _midnight_ns(day: dt.date, tz: dt.tzinfo) -> int:
    return _to_ns(dt.datetime.combine(day, dt.time(), tz))


def _add_months(day: dt.date, months: int) -> dt.date:
    m = day.year * 12 + day.month - 1 + months
    year, month = divmod(m, 12)
    month += 1
    for d in range(day.day, 0, -1):  # 31 March - 1 month = 29/28 February
        try:
            return dt.date(year, month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _next_bucket(day: dt.date, size: BucketSize) -> dt.date:
    if size is BucketSize.DAY:
        return day + dt.timedelta(days=1)
    if size is BucketSize.WEEK:
        return day + dt.timedelta(days=7)
    return _add_months(day.replace(day=1), 1)


def _bucket_label(start_ns: int, window: Window) -> str:
    day = _local(start_ns, window.tz).date()
    if window.bucket_size is BucketSize.MONTH:
        return day.strftime("%Y-%m")
    return day.isoformat()


def _period_name(w: Window) -> str:
    """``week 2026-03-02 00:00 → ...``: the label, unless the dates alone name the period."""
    return (
        "" if w.label == "custom" else f"{w.label} "
    ) + f"{_stamp(w.start_ns, w.tz)} → {_stamp(w.end_ns, w.tz)}"


def _iso(ns: int, tz: dt.tzinfo) -> str:
    return _local(ns, tz).isoformat()


def _stamp(ns: int, tz: dt.tzinfo) -> str:
    return _local(ns, tz).strftime("%Y-%m-%d %H:%M")


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"


def _dur(ms: float | None) -> str:
    """A latency for people: ms below a second, then s, min, h."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def dumps(report: Report, names: Mapping[str, str] | None = None) -> str:
    """:func:`to_json` as text (UTF-8 names kept as themselves)."""
    return json.dumps(to_json(report, names), ensure_ascii=False, indent=2)
