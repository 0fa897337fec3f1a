"""A trace as the operator reads it (a timeline table and the verdict) or as a JSON document."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Final

from tongban.ops.trace.timeline import Trace, TraceHop, Verdict

_RED: Final = "\x1b[31m"
_GREEN: Final = "\x1b[32m"
_YELLOW: Final = "\x1b[33m"
_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"


def to_document(trace: Trace, v: Verdict) -> dict[str, Any]:
    """The trace and its verdict as JSON-ready data (``tongban trace --json``)."""
    failing = trace.failing
    rows = []
    prev: TraceHop | None = None
    for h in trace.hops:
        rows.append(
            {
                "time": format_time(h.time_ns, 6),
                "time_unix_nano": h.time_ns,
                "region": h.region,
                "event": h.event,
                "service_code": h.service_code,
                "peer_region": h.peer_region,
                "detail": h.reading.text,
                "ledger_index": h.index,
                "since_previous_ms": None if prev is None else round((h.time_ns - prev.time_ns) / 1e6, 3),
                "failing": h is failing,
            }
        )
        prev = h
    span = trace.hops[-1].time_ns - trace.hops[0].time_ns
    return {
        "query": trace.query,
        "message_id": trace.message_id,
        "case_no": trace.case_no,
        "service_code": trace.hops[0].service_code,
        "trace_ids": trace.trace_ids,
        "regions": [asdict(r) for r in trace.regions],
        "timeline": rows,
        "failing_hop": None if failing is None else trace.hops.index(failing),
        "total_ms": round(span / 1e6, 3),
        "verdict": asdict(v),
    }


def render(trace: Trace, v: Verdict, *, colour: bool) -> str:
    """The trace as text: how each region was read, the timeline (the failing hop marked), the
    total and the verdict; ``colour`` paints them with ANSI escapes."""

    def paint(text: str, *codes: str) -> str:
        return "".join(codes) + text + _RESET if colour else text

    failing = trace.failing
    lines = [f"message {trace.message_id}" + (f"  case {trace.case_no}" if trace.case_no else "")]
    lines.append(f"service {trace.hops[0].service_code}")
    lines.append(
        "trace id "
        + (", ".join(trace.trace_ids) if trace.trace_ids else "- (none recorded)")
        + "  (look it up in the tracing back end, if one is configured)"
    )
    for r in trace.regions:
        where = {
            "local": f"{r.region} (local) {r.address}",
            "relay": f"{r.region} via {r.via}'s gateway (NATS)",
            "direct": f"{r.region} {r.address or '-'} (direct)",
        }[r.path]
        if r.status == "ok":
            lines.append(f"  ledger of {where}: {r.entries} {'entry' if r.entries == 1 else 'entries'}")
        else:
            word = {
                "unreachable": "UNREACHABLE",
                "refused": "REFUSED",
                "no-address": "NOT ASKED",
                "error": "ERROR",
            }[r.status]
            lines.append(paint(f"  ledger of {where}: {word}: {r.error}", _YELLOW))
    header = ("", "TIME (UTC)", "REGION", "EVENT", "SERVICE", "+PREVIOUS", "DETAIL")
    table: list[tuple[str, ...]] = [header]
    prev: TraceHop | None = None
    for h in trace.hops:
        since = "" if prev is None else "+" + format_duration(h.time_ns - prev.time_ns)
        mark = "=>" if h is failing else ""
        detail = h.reading.text or "-"
        if h is failing:
            detail += "   <-- failing hop"
        table.append((mark, format_time(h.time_ns, 3), h.region, h.event, h.service_code, since, detail))
        prev = h
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines.append("")
    for n, row in enumerate(table):
        cells = [row[i].rjust(widths[i]) if i == 5 else row[i].ljust(widths[i]) for i in range(len(widths))]
        text = "  ".join([*cells, row[-1]]).rstrip()
        if n == 0:
            text = paint(text, _BOLD)
        elif trace.hops[n - 1] is failing:
            text = paint(text, _BOLD, _RED)
        lines.append(text)
    lines.append("")
    span = trace.hops[-1].time_ns - trace.hops[0].time_ns
    regions = {h.region for h in trace.hops}
    skew = " (across regions: includes the skew between their clocks)" if len(regions) > 1 else ""
    lines.append(f"total {format_duration(span)} over {len(trace.hops)} entries{skew}")
    tone = {"delivered": _GREEN, "in_transit": _YELLOW}.get(v.status, _RED)
    lines.append(paint(f"verdict: {v.text}", _BOLD, tone))
    return "\n".join(lines)


def format_time(ns: int, digits: int) -> str:
    """``2026-03-01T08:00:00.123Z``: UTC, with ``digits`` digits of the second's fraction."""
    t = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ns % 1_000_000_000:09d}"[:digits]
    return f"{t}.{frac}Z"


def format_duration(ns: float) -> str:
    """A duration for people: ms below a second, then s, ``1m05s``, ``2h03m``, ``1d04h``."""
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1e9:
        return f"{sign}{ns / 1e6:.1f} ms"
    if ns < 60e9:
        return f"{sign}{ns / 1e9:.3f} s"
    s = int(ns // 1e9)
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h{s // 60 % 60:02d}m"
    return f"{sign}{s // 86400}d{s // 3600 % 24:02d}h"
