"""Exchange reports: volumes, success rates, latencies and 堵点 of one region's ledger over a period.

A report reads only the region's own ledger (no other region, no metrics back end): what the gateway
and the connector recorded through ``tongban.runtime.records.draft``, each entry's detail a typed
``tongban.core.details.Detail``.

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

One module per part: ``calendar`` (the period and its buckets), ``tracking`` (requests from entries,
and the one reader of entries' details), ``stats`` (the aggregation into a :class:`Report`),
``reading`` (the ledger reads: :func:`collect`), ``render`` (text tables, JSON) and ``chart``.
"""

from tongban.ops.report.calendar import (
    BEIJING,
    BucketSize,
    Period,
    Window,
    parse_when,
    period_window,
    window_between,
)
from tongban.ops.report.chart import write_chart
from tongban.ops.report.reading import collect, read_window
from tongban.ops.report.render import display_width, dumps, render_text, table, to_json
from tongban.ops.report.stats import Bucket, Report, ReportBuilder, Row, Stats, build_report, percentile
from tongban.ops.report.tracking import (
    Direction,
    Kind,
    Outcome,
    Request,
    RequestTracker,
    failure_reason,
)

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
