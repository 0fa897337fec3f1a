"""The period of a report (tongban/ops/report/calendar.py): whole days in Beijing time, and buckets."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from tongban.ops.report import BEIJING, parse_when, period_window, window_between


@pytest.mark.parametrize(
    ("now", "period", "since", "bucket"),
    [
        ("2026-03-08T15:00", "week", "2026-03-02", "day"),
        ("2026-03-31T08:00", "month", "2026-03-01", "day"),  # 28 Feb + 1 day
        ("2026-05-15T23:59", "quarter", "2026-02-16", "week"),
        ("2026-11-22T00:30", "year", "2025-11-23", "month"),
    ],
)
def test_periods_are_whole_days_in_beijing_time(now: str, period: str, since: str, bucket: str) -> None:
    w = period_window(period, now_ns=parse_when(now))
    assert dt.datetime.fromtimestamp(w.start_ns / 1e9, BEIJING).isoformat() == f"{since}T00:00:00+08:00"
    assert w.end_ns == parse_when(now) and w.bucket_size == bucket
    starts = w.boundaries()
    assert starts[0] == w.start_ns and all(a < b < w.end_ns for a, b in itertools.pairwise(starts))


def test_buckets_are_labelled_by_their_local_date_or_month() -> None:
    week = window_between("2026-03-02", "2026-03-09")
    assert [week.bucket_label(s) for s in week.boundaries()] == [f"2026-03-0{d}" for d in range(2, 9)]
    year = window_between("2025-11-23", "2026-11-22T00:30")
    labels = [year.bucket_label(s) for s in year.boundaries()]
    assert labels[0] == "2025-11" and labels[1] == "2025-12" and labels[-1] == "2026-11"
    # Midnight in Beijing is 16:00 UTC the day before: still the Beijing date.
    assert week.bucket_label(parse_when("2026-03-05T00:00")) == "2026-03-05"


def test_a_period_ends_after_it_starts() -> None:
    with pytest.raises(ValueError, match="must end after it starts"):
        window_between("2026-03-09", "2026-03-02")
