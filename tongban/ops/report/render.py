"""A report as text tables for a terminal or as JSON, and the small formats both share with the chart."""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tongban.ops.report.calendar import Window, local_time
from tongban.ops.report.stats import Report, Row, Stats

_NUMBER: Final = re.compile(r"-|[0-9][0-9.,]*(?: ?(?:%|ms|s|min|h))?")
"""A table cell aligned to the right: a count, a rate or a duration (``-`` when there is none)."""


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


def dumps(report: Report, names: Mapping[str, str] | None = None) -> str:
    """:func:`to_json` as text (UTF-8 names kept as themselves)."""
    return json.dumps(to_json(report, names), ensure_ascii=False, indent=2)


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
        f"tongban exchange report · region {report.region} · {period_name(w)} (UTC+8)",
        f"requests {t.requests} · ok {t.ok} · failed {t.failed} · pending {t.pending} · "
        f"success {format_rate(t.success_rate)} · latency p50 {format_duration(t.p50_ms)} "
        f"p90 {format_duration(t.p90_ms)} p99 {format_duration(t.p99_ms)}",
    ]
    stat_head = ["requests", "ok", "failed", "pending", "success", "p50", "p90", "p99"]

    def stat_cells(s: Stats) -> list[str]:
        return [
            str(s.requests),
            str(s.ok),
            str(s.failed),
            str(s.pending),
            format_rate(s.success_rate),
            format_duration(s.p50_ms),
            format_duration(s.p90_ms),
            format_duration(s.p99_ms),
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
        [[k, str(n), format_rate(n / t.failed)] for k, n in t.reasons[:rows]],
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
                format_rate(b.failed / (b.ok + b.failed) if b.ok + b.failed else None),
                "#" * (round(30 * b.requests / peak) if peak else 0),
            ]
            for b in report.buckets
        ],
    )
    return "\n".join(out) + "\n"


def _slow_cells(s: Stats) -> list[str]:
    return [str(s.requests), format_duration(s.p50_ms), format_duration(s.p90_ms), format_duration(s.p99_ms)]


def _fail_cells(s: Stats) -> list[str]:
    top = f"{s.reasons[0][0]} ×{s.reasons[0][1]}" if s.reasons else ""
    return [str(s.requests), str(s.failed), format_rate(s.failure_rate), top]


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


# -- formats shared with the chart ------------------------------------------------------------


def period_name(w: Window) -> str:
    """``week 2026-03-02 00:00 → ...``: the label, unless the dates alone name the period."""
    return (
        "" if w.label == "custom" else f"{w.label} "
    ) + f"{_stamp(w.start_ns, w.tz)} → {_stamp(w.end_ns, w.tz)}"


def format_rate(r: float | None) -> str:
    """A rate as a percentage with one decimal; ``-`` when there is none."""
    return "-" if r is None else f"{100 * r:.1f}%"


def format_duration(ms: float | None) -> str:
    """A latency for people: ms below a second, then s, min, h; ``-`` when there is none."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def _iso(ns: int, tz: dt.tzinfo) -> str:
    return local_time(ns, tz).isoformat()


def _stamp(ns: int, tz: dt.tzinfo) -> str:
    return local_time(ns, tz).strftime("%Y-%m-%d %H:%M")
