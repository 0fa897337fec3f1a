"""Reading the regions' ledgers for a trace: the local gateway first, then every region the entries
name, through the local gateway (over NATS) or at a region's own gateway."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tongban.core.message_ids import case_region, is_case_no
from tongban.core.registry import Registry
from tongban.ops.trace.timeline import RegionRead, Trace, TraceHop, hops_of
from tongban.runtime.config import Config
from tongban.v1 import ledger_pb2, ledger_pb2_grpc

_REGION: Final = re.compile(r"^[0-9]{6}$")
_UNREACHABLE: Final = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
_REFUSED: Final = ("PERMISSION_DENIED", "UNAUTHENTICATED")
_NO_ADDRESS: Final = (
    "the registry names no gateway address for it: give --peer REGION=HOST:PORT, or read it through "
    "the local gateway (without --direct)"
)

Route = Callable[[str], "str | None"]
"""How to read a peer region: its gateway's address to read it directly, "" when it should be read
directly but no address is known, None to read it through the local gateway (over NATS)."""


class LocalUnreachable(Exception):
    """The local gateway did not answer: there is nothing to trace from."""


class NotTraced(Exception):
    """Nothing to trace: unknown case, or no entries of the message."""


def is_region_code(value: str) -> bool:
    """Whether ``value`` has the shape of a region code (6 digits), as entries name peer regions."""
    return _REGION.match(value) is not None


def local_gateway_address(cfg: Config, registry: Registry | None) -> str:
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


class LedgerReader:
    """Ledger reads over gRPC, one channel per address, every call with a deadline.

    Args:
        connect: opens a channel to a gateway's address (with the operator's TLS credentials).
        timeout: the deadline of each read, in seconds.
    """

    def __init__(self, connect: Callable[[str], grpc.Channel], *, timeout: float) -> None:
        self.connect, self.timeout = connect, timeout
        self.channels: dict[str, grpc.Channel] = {}

    def stub(self, address: str) -> ledger_pb2_grpc.LedgerStub:
        if address not in self.channels:
            self.channels[address] = self.connect(address)
        return ledger_pb2_grpc.LedgerStub(self.channels[address])

    def read_all(
        self, calls: list[tuple[str, ledger_pb2.GetEntriesRequest]]
    ) -> list[tuple[list[TraceHop], grpc.RpcError | None]]:
        """(hops, None) or ([], the RpcError) per (address, request), the calls running together."""
        futures = [self.stub(addr).GetEntries.future(req, timeout=self.timeout) for addr, req in calls]
        out: list[tuple[list[TraceHop], grpc.RpcError | None]] = []
        for f in futures:
            try:
                out.append((hops_of(f.result().entries), None))
            except grpc.RpcError as err:
                out.append(([], err))
        return out

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def problem(err: grpc.RpcError) -> tuple[str, str]:
    """(status, "CODE (REASON): details") of a failed read."""
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
    reader: LedgerReader,
) -> Trace:
    """Read the local ledger, then every region the entries name, until no new region turns up.

    Every region read is asked for the message id and for each trace id seen so far; ``route`` says
    whether through the local gateway or at which gateway directly.

    Raises:
        LocalUnreachable: the local gateway did not answer.
        NotTraced: no case or no entries of the message to trace.
    """
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
        raise LocalUnreachable(f"the local gateway {local_address} is unreachable ({problem(err)[1]})")
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
            raise NotTraced(f"no case {query} at the gateway {local_address} ({problem(err)[1]}){hint}")
        reads.append(RegionRead(home, home_address))
        [(hops, err)] = reader.read_all([(home_address, first)])
        if err is not None or not hops:
            why = problem(err)[1] if err is not None else "no entries"
            raise NotTraced(
                f"no case {query} at {local_address} nor at {home}'s gateway {home_address} ({why})"
            )
        [(mine, err)] = reader.read_all(
            [(local_address, ledger_pb2.GetEntriesRequest(message_id=hops[0].message_id))]
        )
        if err is not None:
            local.status, local.error = problem(err)
        hops += mine
    elif err is not None:
        raise NotTraced(f"the local gateway {local_address} refused the read ({problem(err)[1]})")
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
        for region in sorted({h.peer_region for h in found.values() if is_region_code(h.peer_region)}):
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
        calls: list[tuple[str, ledger_pb2.GetEntriesRequest]] = []
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
                    read.status, read.error = problem(err)
                continue
            found.update({(h.region, h.index): h for h in more})
    for read in reads:
        read.entries = sum(1 for h in found.values() if h.region == read.region)
    ordered = sorted(found.values(), key=lambda h: (h.time_ns, h.region, h.index))
    case_no = query if case else ""
    for h in ordered:
        if case_no:
            break
        case_no = h.reading.case_no
    return Trace(query, message_id, case_no, ordered, reads, sorted(trace_ids))
