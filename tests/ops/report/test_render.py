"""A report as text (tongban/ops/report/render.py): tables a terminal aligns, durations for people."""

from __future__ import annotations

import pytest

from tongban.ops.report import display_width, table
from tongban.ops.report.render import format_duration, format_rate


def test_tables_align_chinese_names() -> None:
    lines = table(["code", "name", "n"], [["A1", "社会保险参保缴费记录查询", "1"], ["B2", "x", "100"]])
    assert len({display_width(line) for line in lines}) == 1
    assert display_width("社保ab") == 6


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (2.25, "2.2 ms"),
        (40.0, "40 ms"),
        (1500.0, "1.5 s"),
        (90_000.0, "1.5 min"),
        (5_400_000.0, "1.5 h"),
    ],
)
def test_durations_for_people(ms: float | None, text: str) -> None:
    assert format_duration(ms) == text


def test_rates_are_percentages() -> None:
    assert (format_rate(None), format_rate(0.5), format_rate(1 / 3)) == ("-", "50.0%", "33.3%")
