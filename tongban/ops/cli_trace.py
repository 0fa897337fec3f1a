"""`tongban trace <message-id | case-no>`: one request's path across regions, from their ledgers.

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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tongban.core import outcomes
from tongban.core.message_ids import case_region, is_case_no, is_message_id

_REGION = re.compile(r"^[0-9]{6}$")
_REASON = re.compile(r"\breason=(\S+)")
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
_REFUSED = ("PERMISSION_DENIED", "UNAUTHENTICATED")
_NO_ADDRESS = (
    "the registry names no gateway address for it: give --peer REGION=HOST:PORT, or read it through "
    "the local gateway (without --direct)"
)

Route = Callable[[str], "str | None"]
"""How to read a peer region: its gateway's address to read it directly, "" when it should be read
directly but no address is known, None to read it through the local gateway (over NATS)."""
_RED, _GREEN, _YELLOW, _BOLD, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


def add_parser(sub: Any, node_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``tongban trace`` on the command line's subparsers."""
    from tongban.ops.cli import _tls_flags

    t = sub.add_parser(
        "trace",
        help="a request's timeline across regions from their ledgers (message id or case number)",
        description="Rebuild a request's path across regions from the regions' ledgers: one timeline "
        "ordered by time, the time between hops, the failing hop and a verdict. Peer regions' ledgers are "
        "read through the local gateway, which asks them over NATS for their entries about this region's "
        "traffic; --peer and --direct read them at their own gateways instead. Each region stamps entries "
        "with its own clock: durations across regions include the skew between them.",
    )
    t.add_argument("id", metavar="MESSAGE_ID|CASE_NO", help="message id (26-character ULID) or case number")
    t.add_argument(
        "--gateway", default="", help="host:port of the local gateway (default: from the node config)"
    )
    t.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="REGION=HOST:PORT",
        help="read this peer region directly at its gateway (repeat); needs a certificate it accepts",
    )
    t.add_argument(
        "--direct",
        action="store_true",
        help="read every peer region directly at the gateway address the registry gives, not through the "
        "local gateway (dev and ops set-ups where the operator's certificate is accepted everywhere)",
    )
    t.add_argument("--json", action="store_true", help="print a machine-readable document")
    t.add_argument("--timeout", type=float, default=5.0, help="deadline of each ledger read in seconds")
    _tls_flags(t)
    node_flags(t)
    t.set_defaults(func=cmd_trace)


@dataclass(frozen=True)
class Hop:
    """One ledger entry on the timeline."""

    time_ns: int
    region: str
    """The region whose ledger holds the entry (and whose clock stamped it)."""
    event: str
    service_code: str
    detail: str
    peer_region: str
    message_id: str
    trace_id: str
    index: int

    @property
    def failing(self) -> bool:
        return outcomes.is_failure(self.event, self.detail)


@dataclass
class RegionRead:
    """How one region's ledger was read."""

    region: str
    address: str
    """The gateway asked: the region's own, or for ``path`` relay the local gateway."""
    local: bool = False
    status: str = "ok"
    """ok, unreachable, refused, error or no-address."""
    error: str = ""
    entries: int = 0
    path: Literal["local", "relay", "direct"] = "direct"
    """local: the local gateway's own ledger; relay: through the local gateway, which read the region
    over NATS; direct: at the region's own gateway."""
    via: str = ""
    """For ``path`` relay, the region whose gateway relayed the read."""


@dataclass(frozen=True)
class Verdict:
    """Where the request ended up, in one line."""

    status: str
    """delivered, rejected, expired, dead_lettered, failed or in_transit."""
    text: str
    region: str = ""
    reason: str = ""


@dataclass
class Trace:
    """The merged timeline of one request and how each region's ledger was read."""

    query: str
    message_id: str
    case_no: str
    hops: list[Hop]
    regions: list[RegionRead]
    trace_ids: list[str] = field(default_factory=list)

    @property
    def failing(self) -> Hop | None:
        return next((h for h in self.hops if h.failing), None)


class LocalUnreachable(Exception):
    """The local gateway did not answer: there is nothing to trace from."""


class NotTraced(Exception):
    """Nothing to trace: unknown case, or no entries of the message."""


def _address_from_config(cfg: Any, registry: Any) -> str:
    """The local gateway: its fixed listen address, the port it wrote, or the registry's address."""
    host, _, port = cfg.gateway.listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
    if port not in ("", "0"):
        return f"{host}:{port}"
    pf = cfg.path(cfg.gateway.port_file) if cfg.gateway.port_file else None
    if pf is not None and pf.exists():
        return f"{host}:{pf.read_text().strip()}"
    region = registry.region(cfg.region.code) if registry is not None else None
    return region.gateway_address if region is not None else ""


def _hops(entries: Iterable[Any]) -> list[Hop]:
    return [
        Hop(
            time_ns=e.time.ToNanoseconds(),
            region=e.region,
            event=e.event,
            service_code=e.service_code,
            detail=e.detail,
            peer_region=e.peer_region,
            message_id=e.message_id,
            trace_id=e.trace_id,
            index=e.index,
        )
        for e in entries
    ]


class _Reader:
    """Ledger reads over gRPC, one channel per address, every call with a deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.channels: dict[str, Any] = {}

    def stub(self, address: str) -> Any:
        from tongban.ops.cli import _channel
        from tongban.v1 import ledger_pb2_grpc

        if address not in self.channels:
            a = self.args
            self.channels[address] = _channel(
                argparse.Namespace(gateway=address, ca=a.ca, cert=a.cert, key=a.key)
            )
        return ledger_pb2_grpc.LedgerStub(self.channels[address])

    def read_all(self, calls: list[tuple[str, Any]]) -> list[tuple[list[Hop], Any]]:
        """(hops, None) or ([], the RpcError) per (address, request), the calls running together."""
        import grpc

        futures = [self.stub(addr).GetEntries.future(req, timeout=self.args.timeout) for addr, req in calls]
        out: list[tuple[list[Hop], Any]] = []
        for f in futures:
            try:
                out.append((_hops(f.result().entries), None))
            except grpc.RpcError as err:
                out.append(([], err))
        return out

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def _problem(err: Any) -> tuple[str, str]:
    """(status, "CODE (REASON): details") of a failed read."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = err.code().name
    reason = ""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that do not match the status: show the status alone
        status = None
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = f" ({info.reason})"
    kind = "unreachable" if code in _UNREACHABLE else "refused" if code in _REFUSED else "error"
    return kind, f"{code}{reason}: {err.details()}"


def collect(
    query: str,
    *,
    local_address: str,
    local_region: str,
    route: Route,
    reader: _Reader,
) -> Trace:
    """Read the local ledger, then every region the entries name, until no new region turns up.

    Every region read is asked for the message id and for each trace id seen so far; ``route`` says
    whether through the local gateway or at which gateway directly.
    """
    from tongban.v1 import ledger_pb2

    case = is_case_no(query)
    first = ledger_pb2.GetEntriesRequest()
    if case:
        first.case_no = query
    else:
        first.message_id = query
    local = RegionRead(local_region, local_address, local=True, path="local")
    reads = [local]
    [(hops, err)] = reader.read_all([(local_address, first)])
    mine = hops
    if err is not None and err.code().name in _UNREACHABLE:
        raise LocalUnreachable(f"the local gateway {local_address} is unreachable ({_problem(err)[1]})")
    if err is not None and case and err.code().name == "NOT_FOUND":
        # Submitted through another region's gateway: only its case store knows the case, and only
        # a direct read can ask it (a peer answers over NATS by message id or trace id alone).
        home = case_region(query) or ""
        home_address = route(home) if home != local_region else None
        if not home_address or home_address == local_address:
            hint = ""
            if home != local_region and home_address != local_address:
                hint = (
                    f"; the case was submitted in {home}, whose gateway alone knows it: trace its "
                    f"message id, or read {home} directly (--peer {home}=HOST:PORT, or --direct)"
                )
            raise NotTraced(f"no case {query} at the gateway {local_address} ({_problem(err)[1]}){hint}")
        reads.append(RegionRead(home, home_address))
        [(hops, err)] = reader.read_all([(home_address, first)])
        if err is not None or not hops:
            why = _problem(err)[1] if err is not None else "no entries"
            raise NotTraced(
                f"no case {query} at {local_address} nor at {home}'s gateway {home_address} ({why})"
            )
        [(mine, err)] = reader.read_all(
            [(local_address, ledger_pb2.GetEntriesRequest(message_id=hops[0].message_id))]
        )
        if err is not None:
            local.status, local.error = _problem(err)
        hops += mine
    elif err is not None:
        raise NotTraced(f"the local gateway {local_address} refused the read ({_problem(err)[1]})")
    if not hops:
        raise NotTraced(f"no ledger entry of {query} at the gateway {local_address}")
    message_id = hops[0].message_id
    if not local.region:  # --gateway alone: the region its ledger names
        local.region = mine[0].region if mine else "?"
    found = {(h.region, h.index): h for h in hops}
    asked: dict[str, set[str]] = {r.region: set() for r in reads}  # region: trace ids asked there
    by_id = set(asked)  # regions already asked by message id (or case number)
    while True:
        trace_ids = {h.trace_id for h in found.values() if h.trace_id}
        for region in sorted({h.peer_region for h in found.values() if _REGION.match(h.peer_region)}):
            if region not in asked:
                address = route(region)
                if address is None:
                    read = RegionRead(region, local_address, path="relay", via=local.region)
                else:
                    read = RegionRead(region, address)
                reads.append(read)
                if read.address:
                    asked[region] = set()
                else:
                    read.status, read.error = "no-address", _NO_ADDRESS
                    asked[region] = trace_ids  # nothing to ask
        calls: list[tuple[str, Any]] = []
        owners: list[RegionRead] = []
        for read in reads:
            if read.status != "ok":
                continue
            region = read.region if read.path == "relay" else ""
            todo = [
                ledger_pb2.GetEntriesRequest(trace_id=t, region=region)
                for t in sorted(trace_ids - asked[read.region])
            ]
            if read.region not in by_id:
                by_id.add(read.region)
                todo.insert(0, ledger_pb2.GetEntriesRequest(message_id=message_id, region=region))
            asked[read.region] |= trace_ids
            calls += [(read.address, req) for req in todo]
            owners += [read] * len(todo)
        if not calls:
            break
        for read, (more, err) in zip(owners, reader.read_all(calls), strict=True):
            if err is not None:
                if read.status == "ok":
                    read.status, read.error = _problem(err)
                continue
            found.update({(h.region, h.index): h for h in more})
    for read in reads:
        read.entries = sum(1 for h in found.values() if h.region == read.region)
    ordered = sorted(found.values(), key=lambda h: (h.time_ns, h.region, h.index))
    case_no = query if case else ""
    for h in ordered:
        if case_no:
            break
        if h.event == "SUBMITTED" and is_case_no(h.detail):
            case_no = h.detail
        elif m := re.search(r"\bcase=(\S+)", h.detail):
            case_no = m.group(1)
    return Trace(query, message_id, case_no, ordered, reads, sorted(trace_ids))


def _success(h: Hop) -> bool:
    """The request reached its region's back end (PROCESSED), was answered OK, or a case status
    came back.

    A Query's PROCESSED with a problem is followed by a failing RESPONDED. The handling region
    writes a STATUS entry for every event it sends, failures included (``seq=1 event=...``); the
    submitting region records a received status as STATUS (``seq=1 status=3 event=...``), a
    failure as the failure's own event.
    """
    if h.event == "RESPONDED":
        return h.detail == "OK"
    if h.event == "PROCESSED":
        return h.detail == "OK" or h.detail.startswith("case=")
    status = re.search(r"\bstatus=(\d+)", h.detail)
    return h.event == "STATUS" and status is not None and status.group(1) != "0"


def _last_case_status(hops: list[Hop]) -> str:
    """``, last case status APPROVED`` from the last status the submitting region received."""
    from tongban.v1 import exchange_pb2

    names = {int(v): k.removeprefix("CASE_STATUS_") for k, v in exchange_pb2.CaseStatus.items()}
    for h in reversed(hops):
        m = re.search(r"\bstatus=(\d+)", h.detail) if h.event == "STATUS" else None
        if m is not None and int(m.group(1)) in names:
            return f", last case status {names[int(m.group(1))]}"
    return ""


def verdict(trace: Trace) -> Verdict:
    """Delivered (unless a failure came after the last success), else the first failing hop, else
    in transit."""
    hops = trace.hops
    failures = [h for h in hops if h.failing]
    last_failure = max((hops.index(h) for h in failures), default=-1)
    ok = [h for h in hops[last_failure + 1 :] if _success(h)]
    if failures and not ok:
        first = failures[0]
        reason = outcomes.reason(first.event, first.detail)
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
            to, how = answered.peer_region, f"answered {answered.detail}"
        elif processed is not None:
            why = _REASON.search(processed.detail)
            to, how = processed.region, "processed" + (f" (outcome {why.group(1)})" if why else "")
        else:
            # Status events only: the handling region's own ledger was not read.
            first_status = ok[0]
            local = {r.region for r in trace.regions if r.local}
            to = first_status.peer_region if first_status.region in local else first_status.region
            how = "status events came back"
        text = f"delivered to {to}: {how}" + _last_case_status(ok)
        if failures:
            f = failures[0]
            first_why = outcomes.reason(f.event, f.detail)
            text += f" (after {len(failures)} failed hop(s); first {f.event} at {f.region}: {first_why})"
        return Verdict("delivered", text, to)
    last = hops[-1]
    age = _duration(datetime.now(UTC).timestamp() * 1e9 - last.time_ns)
    return Verdict(
        "in_transit",
        f"in transit, last seen {last.event} at {last.region} {_iso(last.time_ns, 3)} ({age} ago)",
        last.region,
    )


def _iso(ns: int, digits: int) -> str:
    t = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ns % 1_000_000_000:09d}"[:digits]
    return f"{t}.{frac}Z"


def _duration(ns: float) -> str:
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


def to_document(trace: Trace, v: Verdict) -> dict[str, Any]:
    failing = trace.failing
    rows = []
    prev: Hop | None = None
    for h in trace.hops:
        rows.append(
            {
                "time": _iso(h.time_ns, 6),
                "time_unix_nano": h.time_ns,
                "region": h.region,
                "event": h.event,
                "service_code": h.service_code,
                "peer_region": h.peer_region,
                "detail": h.detail,
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
    prev: Hop | None = None
    for h in trace.hops:
        since = "" if prev is None else "+" + _duration(h.time_ns - prev.time_ns)
        mark = "=>" if h is failing else ""
        detail = h.detail or "-"
        if h is failing:
            detail += "   <-- failing hop"
        table.append((mark, _iso(h.time_ns, 3), h.region, h.event, h.service_code, since, detail))
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
    lines.append(f"total {_duration(span)} over {len(trace.hops)} entries{skew}")
    tone = {"delivered": _GREEN, "in_transit": _YELLOW}.get(v.status, _RED)
    lines.append(paint(f"verdict: {v.text}", _BOLD, tone))
    return "\n".join(lines)


def _peers(values: list[str]) -> dict[str, str]:
    peers = {}
    for item in values:
        region, sep, address = item.partition("=")
        if not sep or not _REGION.match(region) or ":" not in address:
            raise ValueError(f"--peer {item!r} must be REGION=HOST:PORT (a 6-digit region code)")
        peers[region] = address
    return peers


def cmd_trace(args: argparse.Namespace) -> int:
    """0 with the timeline printed; 1 when the local gateway is unreachable or knows nothing of
    the request; 2 on bad arguments."""
    from tongban.runtime.telemetry import configure_logging

    configure_logging(fmt="console", level="error", stream=sys.stderr)
    query = args.id.strip()
    if not (is_message_id(query) or is_case_no(query)):
        print(
            f"tongban trace: {query!r} is neither a message id (26 characters, e.g. 01JD3...) nor a case "
            "number (440300-20260301-7K3M9Q2XWA)",
            file=sys.stderr,
        )
        return 2
    try:
        peers = _peers(args.peer)
    except ValueError as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        return 2
    cfg = registry = None
    if args.config or args.region:
        from tongban.runtime.config import Config
        from tongban.runtime.node import load_registry

        path = Path(args.config) if args.config else Path(args.state_dir) / args.region / "node.toml"
        cfg = Config.load(path)
        registry = load_registry(cfg)
    local_address = args.gateway or (_address_from_config(cfg, registry) if cfg is not None else "")
    if not local_address:
        print("tongban trace: give --gateway, or --config / --region of the local node", file=sys.stderr)
        return 2

    def route(region: str) -> str | None:
        if region in peers:
            return peers[region]
        if not args.direct:
            return None
        r = registry.region(region) if registry is not None else None
        return r.gateway_address if r is not None else ""

    reader = _Reader(args)
    try:
        trace = collect(
            query,
            local_address=local_address,
            local_region=cfg.region.code if cfg is not None else "",
            route=route,
            reader=reader,
        )
    except LocalUnreachable as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        if cfg is not None and cfg.gateway.client_ca and not args.cert:
            print("  the gateway requires mutual TLS: give --ca, --cert and --key", file=sys.stderr)
        return 1
    except NotTraced as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
    v = verdict(trace)
    if args.json:
        print(json.dumps(to_document(trace, v), ensure_ascii=False, indent=2))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(render(trace, v, colour=colour))
    return 0
