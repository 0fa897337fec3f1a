"""One request's path across regions, from their ledgers (``tongban trace <message-id | case-no>``).

The operator's local gateway is asked for the flow's entries (Ledger.GetEntries by message id, or by
case number for a Submit made through it); every peer region those entries name is then asked for
the same message id and trace id, and so on for the regions those entries name. The entries are
merged into one timeline ordered by time, with the time since the previous hop, the failing hop
marked and a one-line verdict. Nothing here needs a tracing back end: the ledgers are the record.

A peer region's ledger is read, by default, **through the local gateway**: GetEntries with
``region`` set, which the gateway answers by asking that region over NATS with its own region's
credentials; the peer answers with its entries about the local region's traffic only. The operator
needs a certificate for their own gateway alone, which is all production gives them (a gateway
accepts only its own region's partners). ``--peer REGION=HOST:PORT`` reads that region at its
gateway directly instead, and ``--direct`` every peer region at the address the trust registry
gives: development and operations set-ups where the operator's certificate is accepted everywhere.

Each region stamps its entries with its own clock: across regions a duration includes the skew
between their clocks (a hop may even appear to precede its cause by the skew).

One module per part: ``timeline`` (hops, reads, the verdict's shape), ``details`` (the one reader of
entries' free-text details), ``reading`` (the gRPC reads: :func:`collect`), ``verdicts`` and
``render`` (text and JSON). The command line is ``tongban.ops.cli.trace``.
"""

from tongban.ops.trace.details import HopDetail, read_detail
from tongban.ops.trace.reading import (
    LedgerReader,
    LocalUnreachable,
    NotTraced,
    Route,
    collect,
    is_region_code,
    local_gateway_address,
)
from tongban.ops.trace.render import render, to_document
from tongban.ops.trace.timeline import RegionRead, Trace, TraceHop, Verdict
from tongban.ops.trace.verdicts import verdict

__all__ = [
    "HopDetail",
    "LedgerReader",
    "LocalUnreachable",
    "NotTraced",
    "RegionRead",
    "Route",
    "Trace",
    "TraceHop",
    "Verdict",
    "collect",
    "is_region_code",
    "local_gateway_address",
    "read_detail",
    "render",
    "to_document",
    "verdict",
]
