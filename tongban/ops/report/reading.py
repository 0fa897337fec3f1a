"""Reading a region's ledger for a report: in time order, in chunks, in a few ranges."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Final

from ledger.entry import Entry
from ledger.store import LedgerStore
from tongban.ops.report.calendar import Window
from tongban.ops.report.stats import Report, ReportBuilder
from tongban.ops.report.tracking import (
    DEFAULT_HORIZON_NS,
    DEFAULT_SKEW_NS,
    Request,
    RequestTracker,
    message_created_ns,
    precedes,
    refused_request,
)

DEFAULT_CHUNK: Final = 5000
"""Entries read from the ledger at once."""
DEFAULT_LOOKUPS: Final = 64
"""At most this many failures are settled by a look-up each; more by one read of the ledger."""


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
    created = {e.message_id: message_created_ns(e.message_id) for e in firsts}
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
            if failed is not None and precedes(h, failed):
                earlier.add(h.message_id)
        out += [refused_request(e) for e in timed if e.message_id not in earlier]
    return out
