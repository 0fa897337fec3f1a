"""Statistics of requests: counts, success rates, latency percentiles, 堵点 and the volume series."""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tongban.ops.report.calendar import Window
from tongban.ops.report.tracking import Direction, Outcome, Request


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
    """A region's exchange over a period; build it with :func:`build_report` or
    :func:`tongban.ops.report.collect`.

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
                Bucket(s, w.bucket_label(s), a.requests, a.ok, a.failed, a.pending)
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
