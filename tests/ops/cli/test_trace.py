"""`tongban trace` as an operator runs it (child processes): one request's timeline across regions,
rebuilt from the regions' ledgers.

The operator asks only their own gateway: it reads the peer regions' entries about its region's
traffic over NATS (GetEntries with ``region``). One stack serves the three outcomes: Wuxi has no
back end for WFZJLZM00001 (a Query the gateway publishes and Wuxi's connector refuses), a back end
that is always down for YLDYZGRZ0001 (a Submit retried, then dead-lettered) and the demo back ends
for the rest (delivered). ``--peer`` reads a region at its gateway directly; the dev stack's test
reads with ``--direct`` at the addresses its registry names. With mutual TLS (production), an
operator's certificate of Shenzhen opens Shenzhen's gateway only, and the relay still gives the
whole timeline.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from connectors.demo.backends import DemoBackend, demo_adapters
from ledger import Event
from tests.adapters import FailingAdapter
from tests.conftest import SZ, WX, Pki, Stack, start_stack, stop_stack
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.cli import tongban
from tests.e2e.requests import build, cases, pension
from tests.helpers import eventually, free_port, note
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime import certs
from tongban.runtime.config import Config
from tongban.v1 import exchange_pb2, exchange_pb2_grpc, ledger_pb2, ledger_pb2_grpc

REFUSED = "WFZJLZM00001"  # no back end at Wuxi: its connector answers SERVICE_NOT_SERVED
DEAD = "YLDYZGRZ0001"  # Wuxi's back end is down: retried, then dead-lettered
ATTEMPTS = 2
ROW = re.compile(r"^(=>)?\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\s+(\d{6})\s+([A-Z_]+)\s")


def _catalogue() -> Catalogue:
    """The embedded catalogue with the dead-lettered item retried fast."""
    proto = Catalogue.load().to_proto()
    for item in proto.items:
        if item.code == DEAD:
            del item.delivery.backoff[:]
            item.delivery.backoff.add().FromMilliseconds(50)
            item.delivery.max_attempts = ATTEMPTS
    return Catalogue.from_proto(proto)


@pytest.fixture
async def trace_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    cfg = Config.load(state.config_path(WX))
    adapters = demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))
    del adapters[REFUSED]
    adapters[DEAD] = FailingAdapter("pension system is down")
    s = await start_stack(topology, state, adapters={WX: adapters}, catalogue=_catalogue())
    try:
        yield s
    finally:
        await stop_stack(s)


DELIVERED_QUERY = [
    (SZ, Event.SUBMITTED, False),
    (WX, Event.RECEIVED, False),
    (WX, Event.PROCESSED, False),
    (SZ, Event.RESPONDED, False),
]
"""The timeline rows (region, event, failing) of a delivered Shenzhen → Wuxi query."""


def rows(out: str) -> list[tuple[str, str, bool]]:
    """(region, event, marked as the failing hop) of each timeline row."""
    found = []
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            found.append((m.group(3), m.group(4), m.group(1) == "=>"))
    return found


def verdict_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("verdict: "))


def relayed(region: str, via: str, entries: int) -> str:
    """The summary line of a region read through ``via``'s gateway."""
    return f"ledger of {region} via {via}'s gateway (NATS): {entries} entries"


async def trace(stack: Stack, query: str, *extra: str) -> tuple[str, dict[str, object]]:
    """The text and the --json document of a trace from Shenzhen's node, asking Shenzhen's gateway
    only (Wuxi read through it, over NATS)."""
    flags = ("--config", str(stack.state.config_path(SZ)))
    rc, out, err = await tongban("trace", query, *flags, *extra)
    assert rc == 0, out + err
    print(out)  # `pytest -s` shows the operator's view
    assert "\x1b[" not in out  # no colour into a pipe
    rc, doc_text, err = await tongban("trace", query, *flags, *extra, "--json")
    assert rc == 0, err
    return out, json.loads(doc_text)


def doc_rows(doc: dict[str, object]) -> list[tuple[str, str, bool]]:
    return [(r["region"], r["event"], r["failing"]) for r in doc["timeline"]]  # type: ignore[attr-defined,index]


async def events_of(stack: Stack, region: str, message_id: str) -> list[str]:
    return [e.event for e in await stack.nodes[region].ledger.by_message_id(message_id)]


async def test_delivered_query_and_submit(trace_stack: Stack) -> None:
    stack = trace_stack
    stub = stack.stub(SZ)
    resp = await stub.Query(pension(), timeout=10)
    out, doc = await trace(stack, resp.message_id)
    expected = DELIVERED_QUERY
    assert rows(out) == expected, out
    assert doc_rows(doc) == expected
    assert f"message {resp.message_id}" in out and f"trace id {resp.trace_id}" in out
    assert verdict_line(out) == f"verdict: delivered to {WX}: answered OK"
    assert "=>" not in out and "failing hop" not in out
    assert "total " in out and "skew" in out
    assert doc["failing_hop"] is None and doc["trace_ids"] == [resp.trace_id]
    assert doc["verdict"] == {
        "status": "delivered",
        "text": f"delivered to {WX}: answered OK",
        "region": WX,
        "reason": "",
    }
    since = [r["since_previous_ms"] for r in doc["timeline"]]  # type: ignore[attr-defined,index]
    assert since[0] is None and all(s is not None and s >= 0 for s in since[1:])
    assert [(r["region"], r["status"], r["entries"], r["path"]) for r in doc["regions"]] == [  # type: ignore[attr-defined,index]
        (SZ, "ok", 2, "local"),
        (WX, "ok", 2, "relay"),
    ]
    assert f"ledger of {SZ} (local) {stack.nodes[SZ].address}: 2 entries" in out
    assert relayed(WX, SZ, 2) in out

    receipt = await stub.Submit(submit_request(CASE_SERVICE), timeout=10)
    assert len(await watch(stub, receipt.case_no)) == 3
    await eventually(
        lambda: _count(stack, WX, receipt.message_id, Event.STATUS, 3), what="Wuxi's status entries"
    )
    out, doc = await trace(stack, receipt.case_no)  # by case number: the gateway's case store
    got = rows(out)
    assert Counter((r, e) for r, e, _ in got) == Counter(
        {
            (SZ, Event.SUBMITTED): 1,
            (SZ, Event.PUBLISHED): 1,
            (WX, Event.RECEIVED): 1,
            (WX, Event.PROCESSED): 1,
            (WX, Event.STATUS): 3,
            (SZ, Event.STATUS): 3,
        }
    ), out
    assert got[0] == (SZ, Event.SUBMITTED, False)
    assert got.index((WX, Event.RECEIVED, False)) < got.index((WX, Event.PROCESSED, False))
    assert f"message {receipt.message_id}  case {receipt.case_no}" in out
    assert verdict_line(out) == f"verdict: delivered to {WX}: processed, last case status APPROVED"
    assert doc["case_no"] == receipt.case_no and doc["message_id"] == receipt.message_id
    assert doc["verdict"]["status"] == "delivered"  # type: ignore[index]

    # From the handling region's side: Wuxi's gateway does not know Shenzhen's case number, which
    # names the region it was submitted in; only Shenzhen's gateway resolves it, so it must be read
    # directly. By message id, Wuxi's gateway reads Shenzhen's entries about Wuxi over NATS.
    wx_cfg = str(stack.state.config_path(WX))
    rc, out, err = await tongban(
        "trace", receipt.case_no, "--config", wx_cfg, "--peer", f"{SZ}={stack.nodes[SZ].address}"
    )
    assert rc == 0, out + err
    assert Counter((r, e) for r, e, _ in rows(out)) == Counter((r, e) for r, e, _ in got)
    assert f"ledger of {WX} (local) {stack.nodes[WX].address}: 5 entries" in out
    assert f"ledger of {SZ} {stack.nodes[SZ].address} (direct): 5 entries" in out
    rc, out, err = await tongban("trace", receipt.case_no, "--config", wx_cfg)
    assert rc == 1 and f"the case was submitted in {SZ}" in err and "trace its message id" in err, err
    rc, out, err = await tongban("trace", receipt.message_id, "--config", wx_cfg)
    assert rc == 0, out + err
    assert Counter((r, e) for r, e, _ in rows(out)) == Counter((r, e) for r, e, _ in got)
    assert relayed(SZ, WX, 5) in out
    unknown = f"{SZ}-20260101-AAAAAAAAAA"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        ch = grpc.aio.insecure_channel(stack.nodes[SZ].address)
        stack.channels.append(ch)
        await ledger_pb2_grpc.LedgerStub(ch).GetEntries(
            ledger_pb2.GetEntriesRequest(case_no=unknown), timeout=5
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def _count(stack: Stack, region: str, message_id: str, event: Event, n: int) -> bool:
    return (await events_of(stack, region, message_id)).count(event) >= n


async def test_rejected_at_the_receiving_region(trace_stack: Stack) -> None:
    stack = trace_stack
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.stub(SZ).Query(
            build(next(c for c in cases() if c["service_code"] == REFUSED)), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The caller saw an error; the operator finds the message id in Shenzhen's ledger (or its logs).
    sz = stack.nodes[SZ].ledger
    rejected = [e for e in await sz.entries(0, await sz.size()) if note(e) == "REMOTE: SERVICE_NOT_SERVED"]
    assert len(rejected) == 1
    message_id = rejected[0].message_id

    out, doc = await trace(stack, message_id)
    expected = [
        (SZ, Event.SUBMITTED, False),
        (WX, Event.REJECTED, True),  # the failing hop: Wuxi's connector refused it
        (SZ, Event.REJECTED, False),
    ]
    assert rows(out) == expected, out
    assert doc_rows(doc) == expected
    marked = next(line for line in out.splitlines() if line.startswith("=>"))
    assert "SERVICE_NOT_SERVED" in marked and "<-- failing hop" in marked
    assert verdict_line(out) == f"verdict: rejected at {WX}: SERVICE_NOT_SERVED"
    assert doc["failing_hop"] == 1
    assert doc["verdict"] == {
        "status": "rejected",
        "text": f"rejected at {WX}: SERVICE_NOT_SERVED",
        "region": WX,
        "reason": "SERVICE_NOT_SERVED",
    }


async def test_dead_lettered_submit(trace_stack: Stack) -> None:
    stack = trace_stack
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(DEAD), timeout=10)
    events = await watch(stub, receipt.case_no)
    assert [e.delivery_state for e in events] == [exchange_pb2.DELIVERY_STATE_DEAD_LETTERED]
    await eventually(
        lambda: _count(stack, SZ, receipt.message_id, Event.DEAD_LETTERED, 1), what="Shenzhen's record"
    )

    out, doc = await trace(stack, receipt.message_id)
    got = rows(out)
    assert Counter((r, e) for r, e, _ in got) == Counter(
        {
            (SZ, Event.SUBMITTED): 1,
            (SZ, Event.PUBLISHED): 1,
            (WX, Event.RECEIVED): ATTEMPTS,
            (WX, Event.DEAD_LETTERED): 1,
            (WX, Event.STATUS): 1,  # the event telling Shenzhen
            (SZ, Event.DEAD_LETTERED): 1,
        }
    ), out
    assert [r for r in got if r[2]] == [(WX, Event.DEAD_LETTERED, True)]  # Wuxi's, before Shenzhen's
    assert got.index((WX, Event.DEAD_LETTERED, True)) < got.index((SZ, Event.DEAD_LETTERED, False))
    assert got[-1] == (SZ, Event.DEAD_LETTERED, False)
    assert verdict_line(out) == f"verdict: dead-lettered at {WX}: BACKEND_FAILURE"
    assert f"case {receipt.case_no}" in out
    assert doc["verdict"]["status"] == "dead_lettered"  # type: ignore[index]
    assert doc["timeline"][doc["failing_hop"]]["region"] == WX  # type: ignore[index]


async def test_unreachable_peer_is_reported_and_the_local_one_fails(trace_stack: Stack) -> None:
    stack = trace_stack
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    nowhere = f"127.0.0.1:{free_port()}"
    sz_cfg = str(stack.state.config_path(SZ))
    rc, out, err = await tongban("trace", resp.message_id, "--config", sz_cfg, "--peer", f"{WX}={nowhere}")
    assert rc == 0, out + err
    assert f"ledger of {WX} {nowhere} (direct): UNREACHABLE" in out
    assert rows(out) == [(SZ, Event.SUBMITTED, False), (SZ, Event.RESPONDED, False)]
    assert verdict_line(out) == f"verdict: delivered to {WX}: answered OK"  # from Shenzhen's record
    # --direct, and the (test) registry names no address for Wuxi: said so, not guessed.
    rc, out, err = await tongban("trace", resp.message_id, "--config", sz_cfg, "--direct")
    assert rc == 0 and f"ledger of {WX} - (direct): NOT ASKED" in out, out + err

    rc, out, err = await tongban("trace", resp.message_id, "--gateway", nowhere, "--timeout", "2")
    assert rc == 1 and f"the local gateway {nowhere} is unreachable" in err, out + err
    rc, _, err = await tongban("trace", "not-an-id", "--gateway", nowhere)
    assert rc == 2 and "neither a message id" in err
    rc, _, err = await tongban("trace", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--config", sz_cfg)
    assert rc == 1 and "no ledger entry" in err

    # Wuxi's gateway (and with it its answers over NATS) stopped: Shenzhen's gateway says so.
    wx_gateway = stack.nodes[WX].gateway
    assert wx_gateway is not None
    await wx_gateway.stop()
    rc, out, err = await tongban("trace", resp.message_id, "--config", sz_cfg)
    assert rc == 0, out + err
    line = next(line for line in out.splitlines() if f"ledger of {WX}" in line)
    assert line.startswith(
        f"  ledger of {WX} via {SZ}'s gateway (NATS): UNREACHABLE: UNAVAILABLE (PEER_UNREACHABLE): "
    )
    assert verdict_line(out) == f"verdict: delivered to {WX}: answered OK"


@pytest.mark.skipif(not Path("/proc/sys/net/ipv4/ip_local_port_range").exists(), reason="Linux ports")
async def test_dev_stack_registry_names_the_gateways(tmp_path: Path) -> None:
    """`tongban dev`'s stack: ports picked up front, in node.toml and in the registry; trace finds
    Wuxi's gateway from the registry alone."""
    from tongban.ops.dev import DevStack
    from tongban.runtime.node import load_registry

    dev = DevStack(tmp_path / "dev")
    try:
        await dev.start()
        assert dev.state is not None
        registry = load_registry(Config.load(dev.state.config_path(SZ)))
        for region in (SZ, WX):
            region_entry = registry.region(region)
            assert region_entry is not None
            assert region_entry.gateway_address == f"127.0.0.1:{dev.ports[region]}"
            assert Config.load(dev.state.config_path(region)).gateway.listen == region_entry.gateway_address
        rc, out, err = await tongban(
            "query",
            "--gateway",
            f"127.0.0.1:{dev.ports[SZ]}",
            "--to",
            WX,
            "--service",
            "SBJFJLCX0001",
            "--field",
            "id_no=320213198511200025",
            "--purpose",
            "KSTB_CASE_HANDLING",
            "--approval-ref",
            "SZ-APPROVAL-2026-0001",
        )
        assert rc == 0, err
        message_id = json.loads(out)["message_id"]
        expected = DELIVERED_QUERY
        node = ("--region", SZ, "--state-dir", str(dev.root))
        rc, out, err = await tongban("trace", message_id, *node, "--direct")
        assert rc == 0, out + err
        assert rows(out) == expected, out
        assert f"ledger of {WX} 127.0.0.1:{dev.ports[WX]} (direct): 2 entries" in out
        assert verdict_line(out) == f"verdict: delivered to {WX}: answered OK"
        rc, out, err = await tongban("trace", message_id, *node)  # the gateways' processes relay
        assert rc == 0, out + err
        assert rows(out) == expected and relayed(WX, SZ, 2) in out, out
    finally:
        await dev.stop()


async def test_mutual_tls_operator_reads_every_region_through_its_own_gateway(
    tls_stack: Stack, pki: Pki
) -> None:
    """Production: the operator holds a client certificate of Shenzhen, which only Shenzhen's
    gateway accepts. Through it, the whole cross-region timeline; a direct read of Wuxi is refused,
    and shown as such. (One partner CA serves both gateways, as in the other mTLS tests: Wuxi's
    gateway completes the handshake with Shenzhen's certificate, then refuses a partner of another
    region.)"""
    stack = tls_stack
    certs.write(pki.client(SZ, "sz-ops"), pki.dir, "sz-ops")
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=(pki.dir / "sz-ops.key").read_bytes(),
        certificate_chain=(pki.dir / "sz-ops.crt").read_bytes(),
    )
    ch = grpc.aio.secure_channel(stack.nodes[SZ].address, creds)
    stack.channels.append(ch)
    resp = await exchange_pb2_grpc.ExchangeStub(ch).Query(pension(), timeout=10)

    tls = (
        "--ca",
        str(pki.dir / "ca.crt"),
        "--cert",
        str(pki.dir / "sz-ops.crt"),
        "--key",
        str(pki.dir / "sz-ops.key"),
    )
    out, doc = await trace(stack, resp.message_id, *tls)
    expected = DELIVERED_QUERY
    assert rows(out) == expected, out
    assert doc_rows(doc) == expected
    assert relayed(WX, SZ, 2) in out
    assert verdict_line(out) == f"verdict: delivered to {WX}: answered OK"

    # Without a certificate Shenzhen's gateway does not answer. (The in-process stack's TLS settings
    # are not in node.toml, so the hint to give --ca/--cert/--key is not printed here.)
    sz_cfg = str(stack.state.config_path(SZ))
    rc, out, err = await tongban("trace", resp.message_id, "--config", sz_cfg, "--timeout", "2")
    assert rc == 1 and f"the local gateway {stack.nodes[SZ].address} is unreachable" in err, out + err

    # Wuxi's gateway at its own address with Shenzhen's certificate: refused, a line of the output.
    wx_address = stack.nodes[WX].address
    rc, out, err = await tongban(
        "trace", resp.message_id, "--config", sz_cfg, *tls, "--peer", f"{WX}={wx_address}"
    )
    assert rc == 0, out + err
    assert "Traceback" not in out + err
    line = next(line for line in out.splitlines() if f"ledger of {WX}" in line)
    assert line.startswith(
        f"  ledger of {WX} {wx_address} (direct): REFUSED: PERMISSION_DENIED (PARTNER_OF_ANOTHER_REGION): "
    ), line
    assert rows(out) == [(SZ, Event.SUBMITTED, False), (SZ, Event.RESPONDED, False)]

    # Unreadable certificate files: one line, exit 1.
    for flag in ("--ca", "--cert", "--key"):
        bad = [*tls]
        bad[bad.index(flag) + 1] = str(pki.dir / "missing.pem")
        rc, out, err = await tongban("trace", resp.message_id, "--config", sz_cfg, *bad)
        assert rc == 1, out + err
        assert err.strip().splitlines() == [
            f"cannot read {flag} {pki.dir / 'missing.pem'}: No such file or directory"
        ]
