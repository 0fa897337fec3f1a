"""Where a traced request ended up, in one line."""

from __future__ import annotations

from datetime import UTC, datetime

from tongban.ops.trace.render import format_duration, format_time
from tongban.ops.trace.timeline import Trace, TraceHop, Verdict
from tongban.v1 import exchange_pb2


def verdict(trace: Trace) -> Verdict:
    """Delivered (unless a failure came after the last success), else the first failing hop, else
    in transit."""
    hops = trace.hops
    failures = [h for h in hops if h.failing]
    last_failure = max((hops.index(h) for h in failures), default=-1)
    ok = [h for h in hops[last_failure + 1 :] if h.reading.succeeded]
    if failures and not ok:
        first = failures[0]
        reason = first.reading.reason
        if first.event == "RESPONDED":
            text = f"answered with a problem by {first.peer_region}: {reason}"
            return Verdict("failed", text, first.peer_region, reason)
        status = {"REJECTED": "rejected", "EXPIRED": "expired", "DEAD_LETTERED": "dead_lettered"}[first.event]
        word = status.replace("_", "-")
        return Verdict(status, f"{word} at {first.region}: {reason}", first.region, reason)
    if ok:
        answered = next((h for h in ok if h.event == "RESPONDED"), None)
        processed = next((h for h in ok if h.event == "PROCESSED"), None)
        if answered is not None:
            to, how = answered.peer_region, f"answered {answered.reading.text}"
        elif processed is not None:
            why = processed.reading.outcome
            to, how = processed.region, "processed" + (f" (outcome {why})" if why else "")
        else:
            # Status events only: the handling region's own ledger was not read.
            first_status = ok[0]
            local = {r.region for r in trace.regions if r.local}
            to = first_status.peer_region if first_status.region in local else first_status.region
            how = "status events came back"
        text = f"delivered to {to}: {how}" + _last_case_status(ok)
        if failures:
            f = failures[0]
            text += (
                f" (after {len(failures)} failed hop(s); first {f.event} at {f.region}: {f.reading.reason})"
            )
        return Verdict("delivered", text, to)
    last = hops[-1]
    age = format_duration(datetime.now(UTC).timestamp() * 1e9 - last.time_ns)
    return Verdict(
        "in_transit",
        f"in transit, last seen {last.event} at {last.region} {format_time(last.time_ns, 3)} ({age} ago)",
        last.region,
    )


def _last_case_status(hops: list[TraceHop]) -> str:
    """``, last case status APPROVED`` from the last status the submitting region received."""
    names = {int(v): k.removeprefix("CASE_STATUS_") for k, v in exchange_pb2.CaseStatus.items()}
    for h in reversed(hops):
        status = h.reading.status
        if status and int(status) in names:
            return f", last case status {names[int(status)]}"
    return ""
