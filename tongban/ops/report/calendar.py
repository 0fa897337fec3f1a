"""The period a report covers: whole days in Beijing time, and the buckets of its volume series."""

from __future__ import annotations

import datetime as dt
import enum
import time
from dataclasses import dataclass
from typing import Final

BEIJING: Final = dt.timezone(dt.timedelta(hours=8), "UTC+8")
"""China's one time zone, without daylight saving: days, weeks and months of a report are Beijing's."""

_NS: Final = 1_000_000_000
_DAY_NS: Final = 86_400 * _NS


class Period(enum.StrEnum):
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


class BucketSize(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


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
        first = local_time(self.start_ns, self.tz).date()
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

    def bucket_label(self, start_ns: int) -> str:
        """The label of the bucket starting at ``start_ns``: its date, or its month (``2026-03``)."""
        day = local_time(start_ns, self.tz).date()
        if self.bucket_size is BucketSize.MONTH:
            return day.strftime("%Y-%m")
        return day.isoformat()


def period_window(period: Period | str, *, now_ns: int | None = None, tz: dt.tzinfo = BEIJING) -> Window:
    """The period ending now: whole local days, the current one up to now (see the package docstring)."""
    period = Period(period)
    now_ns = time.time_ns() if now_ns is None else now_ns
    today = local_time(now_ns, tz).date()
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


def local_time(ns: int, tz: dt.tzinfo) -> dt.datetime:
    """The local date-time of ``ns`` in ``tz``, to the second."""
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
