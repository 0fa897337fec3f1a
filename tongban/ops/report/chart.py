"""A report drawn for a briefing (``tongban report --chart``): volume, failure share and the 堵点."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tongban.ops.report.render import format_duration, format_rate, period_name
from tongban.ops.report.stats import Report, Row


def write_chart(report: Report, path: str | Path) -> Path:
    """Draw the report for a briefing: volume per bucket with the failure share, and the 堵点.

    The format follows the suffix: ``.png`` or ``.svg`` (text kept as text). Labels are ASCII
    (service codes, region codes): matplotlib's bundled fonts have no CJK glyphs.

    Raises:
        ValueError: the suffix is neither ``.png`` nor ``.svg``.
    """
    import matplotlib  # lazy: half a second to import, and only --chart needs it
    from matplotlib.figure import Figure  # lazy: as above

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
            f"tongban exchange report - region {report.region} - {period_name(w)} (UTC+8)",
            fontsize=13,
            fontweight="bold",
        )
        _volume_axes(vol, report)
        vol.set_title(
            f"{t.requests} requests, success {format_rate(t.success_rate)}, latency "
            f"p50 {format_duration(t.p50_ms)} / p90 {format_duration(t.p90_ms)} "
            f"/ p99 {format_duration(t.p99_ms)}",
            loc="left",
            fontsize=10,
        )
        _slowest_axes(slow, report)
        _failing_axes(fail, report)
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return path


def _volume_axes(ax: Any, report: Report) -> None:
    from matplotlib.ticker import MaxNLocator  # lazy: as in write_chart, which alone calls this

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
        ax.text(v, yi, f" {format_duration(v * 1000)}", va="center", fontsize=8)
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
