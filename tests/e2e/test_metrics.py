"""Metrics and the operator endpoint (issue 6, acceptance 3): ``/metrics`` scraped over HTTP during
a load run (requests held in flight) and after it shows non-zero counters and histograms for every
hop reached, with the declared label sets, and label values only from their vocabularies (nothing
shaped like an ID number or a phone); ``/livez`` and ``/readyz`` follow the process and its NATS
connection."""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import grpc
import pytest

from connectors.adapters import Adapter, AdapterRequest
from connectors.demo.backends import DemoBackend, demo_adapters
from tests.conftest import SZ, WX
from tests.connectors.test_dead_letters import ATTEMPTS, SwitchableBackend, quick_retry_catalogue
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.metered import Metered, Scrape, readyz, start_metered_stack, stop_metered_stack
from tests.e2e.requests import build, cases, pension
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.runtime.instruments import INSTRUMENTS, TimedHop
from tongban.v1 import catalogue_pb2, exchange_pb2, ledger_pb2, registry_pb2

PENSION = "SBJFJLCX0001"
BATCH = 10
HELD = 10
"""Queries held in Wuxi's back end while the during-load scrapes are taken."""
QUERIES = 2 * BATCH + HELD
GATEWAY_HOPS = {
    TimedHop.VALIDATE,
    TimedHop.SEAL_SIGN,
    TimedHop.ROUND_TRIP,
    TimedHop.VERIFY_REPLY,
    TimedHop.PUBLISH,
    TimedHop.FORWARD,
}
CONNECTOR_HOPS = {TimedHop.VERIFY, TimedHop.OPEN, TimedHop.ADAPTER, TimedHop.REPLY, TimedHop.FORWARD}
REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
RPCS = frozenset(
    method.name
    for module in (exchange_pb2, ledger_pb2, registry_pb2, catalogue_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


class Gate:
    """A back end that, while closed, holds every call until it opens; says when calls wait."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.waiting = 0
        self._open = asyncio.Event()
        self._open.set()
        self._arrivals = asyncio.Condition()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def arrived(self, n: int) -> None:
        """Until ``n`` calls wait at the closed gate."""
        async with self._arrivals:
            await asyncio.wait_for(self._arrivals.wait_for(lambda: self.waiting >= n), 20)

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        if not self._open.is_set():
            async with self._arrivals:
                self.waiting += 1
                self._arrivals.notify_all()
            await self._open.wait()
        return await self.inner.call(request)


@pytest.fixture
async def metered(
    topology: Topology, state: DevState
) -> AsyncIterator[tuple[Metered, SwitchableBackend, Gate]]:
    """Shenzhen and Wuxi with metrics; Wuxi's pension-transfer back end fails (fast retries, then
    the dead-letter stream), its pension-record back end is the demo one behind a gate, its other
    back ends are the demo ones."""
    backend = SwitchableBackend()
    cfg = Config.load(state.config_path(WX))
    gate = Gate(demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))[PENSION])
    m = await start_metered_stack(
        topology,
        state,
        adapters={WX: {CASE_SERVICE: backend, PENSION: gate}},
        catalogue=quick_retry_catalogue(),
    )
    try:
        yield m, backend, gate
    finally:
        gate.open()
        await stop_metered_stack(m)


def submit_services() -> list[str]:
    catalogue = Catalogue.load()
    return [
        code
        for code in catalogue.codes()
        if code != CASE_SERVICE
        and (item := catalogue.get(code)) is not None
        and item.handling_mode != catalogue_pb2.HANDLING_MODE_QUERY
    ]


def label_checks(m: Metered) -> dict[str, Callable[[str], bool]]:
    """What each label may hold, by its name: codes from the catalogue and the registry, names from
    the code, reason codes that are not numbers."""
    gateway = m.stack.nodes[SZ].gateway
    assert gateway is not None
    regions = frozenset(gateway.registry.regions)
    services = frozenset(Catalogue.load().codes())

    def reason(value: str) -> bool:
        return bool(REASON.fullmatch(value)) and not value.isdigit()

    def bound(value: str) -> bool:
        return value == "+Inf" or math.isfinite(float(value))

    return {
        "role": {"gateway", "connector"}.__contains__,
        "region": regions.__contains__,
        "peer_region": (regions | {"-", "?"}).__contains__,
        "service_code": (services | {"-", "?"}).__contains__,
        "hop": {h.value for h in TimedHop}.__contains__,
        "rpc": RPCS.__contains__,
        "outcome": reason,
        "reason": reason,
        "le": bound,
    }


def assert_labels(m: Metered, scrape: Scrape, *, absent: AbstractSet[str] = frozenset()) -> None:
    """Each tongban series carries exactly its instrument's labels, each value checked by the label's
    name; every instrument but the ``absent`` ones has series."""
    declared = {i.prometheus: set(i.labels) for i in INSTRUMENTS}
    checks = label_checks(m)
    seen = set()
    for family in scrape.families.values():
        if not family.name.startswith("tongban_"):
            continue
        assert family.name in declared, f"undeclared metric {family.name}"
        seen.add(family.name)
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            assert labels == declared[family.name], (sample.name, labels)
            for key, value in sample.labels.items():
                assert checks[key](value), (sample.name, key, value)
    assert seen == set(declared) - absent, set(declared) - seen


def hop_counts(scrape: Scrape) -> dict[str, float]:
    return {
        s.labels["hop"]: s.value for s in scrape.samples if s.name == "tongban_hop_duration_seconds_count"
    }


def assert_hops(scrape: Scrape, expected: Mapping[TimedHop, int]) -> None:
    """Exactly these hops have observations, as many as expected, and time spent in them."""
    counts = hop_counts(scrape)
    assert {h: counts.get(h, 0) for h in expected} == dict(expected), counts
    assert {h for h, n in counts.items() if n > 0} == set(expected), counts
    sums = {s.labels["hop"]: s.value for s in scrape.samples if s.name == "tongban_hop_duration_seconds_sum"}
    assert all(sums[h] > 0 for h in expected), sums
    for h in expected:
        inf = scrape.find("tongban_hop_duration_seconds_bucket", hop=h, le="+Inf")
        assert [s.value for s in inf] == [expected[h]], (h, inf)


async def refused_and_submitted(m: Metered) -> tuple[str, int]:
    """Three refused queries, Submits that are handled and one that is dead-lettered; returns the
    dead-lettered case number and the number of Submits handled normally."""
    stub = m.stack.stub(SZ)
    bad = build(cases()[0])
    bad.request.applicant.id_no = "320213198511200026"  # wrong check digit
    unknown_region = pension()
    unknown_region.request.target_region = "999999"
    for refused in (bad, bad, unknown_region):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Query(refused, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    dead = await stub.Submit(submit_request(key="metrics-dead"), timeout=10)
    handled = 0
    for i, service in enumerate(submit_services()[:3]):
        await stub.Submit(submit_request(service, key=f"metrics-{i}"), timeout=10)
        handled += 1
    return dead.case_no, handled


async def test_metrics_during_load(metered: tuple[Metered, SwitchableBackend, Gate]) -> None:
    """Scraped while queries are in flight (held in Wuxi's back end): the counters and histograms
    of every hop reached so far are non-zero, with the declared labels; the in-flight gauges name
    the held requests; scrapes taken all along the load only ever see counters grow."""
    m, _, gate = metered
    stub = m.stack.stub(SZ)
    scrapes: list[Scrape] = []
    done = asyncio.Event()

    async def scrape_all_along() -> None:
        while not done.is_set():
            scrapes.append(await m.scrape(SZ, "gateway"))

    scraper = asyncio.create_task(scrape_all_along())
    try:
        answers = await asyncio.gather(*(stub.Query(pension(), timeout=10) for _ in range(BATCH)))
        gate.close()
        held = asyncio.gather(*(stub.Query(pension(), timeout=30) for _ in range(HELD)))
        await gate.arrived(HELD)  # every held query is in Wuxi's back end: in flight on both sides
        sz, wx = await m.scrape(SZ, "gateway"), await m.scrape(WX, "connector")
        gate.open()
        answers += await held
        answers += await asyncio.gather(*(stub.Query(pension(), timeout=10) for _ in range(BATCH)))
    finally:
        gate.open()
        done.set()
        await scraper
    assert all(a.data for a in answers) and len(answers) == QUERIES

    # Shenzhen's gateway: the answered batch counted; the held queries validated, sealed and waiting.
    assert_labels(
        m, sz, absent={"tongban_redeliveries", "tongban_dead_letters"}
    )  # the gateway neither consumes requests nor dead-letters
    ok = functools.partial(sz.total, "tongban_requests_total", role="gateway", region=SZ, rpc="Query")
    assert ok(service_code=PENSION, peer_region=WX, outcome="OK") == BATCH == ok()
    assert sz.find("tongban_in_flight", rpc="Query")[0].value == HELD
    assert sz.total("tongban_request_duration_seconds_count", rpc="Query", service_code=PENSION) == BATCH
    assert_hops(
        sz,
        {
            TimedHop.VALIDATE: BATCH + HELD,
            TimedHop.SEAL_SIGN: BATCH + HELD,
            TimedHop.ROUND_TRIP: BATCH,
            TimedHop.VERIFY_REPLY: BATCH,
        },
    )
    # Wuxi's connector: the held queries verified, opened and in the back end.
    assert_labels(m, wx, absent={"tongban_redeliveries", "tongban_dead_letters", "tongban_peer_reachable"})
    ok = functools.partial(wx.total, "tongban_requests_total", role="connector", region=WX, rpc="Query")
    assert ok(service_code=PENSION, peer_region=SZ, outcome="OK") == BATCH == ok()
    assert wx.find("tongban_in_flight", rpc="Query")[0].value == HELD
    assert_hops(
        wx,
        {
            TimedHop.VERIFY: BATCH + HELD,
            TimedHop.OPEN: BATCH + HELD,
            TimedHop.ADAPTER: BATCH,
            TimedHop.REPLY: BATCH,
        },
    )

    # Scraped from the endpoint's thread while the event loop counted: never a step back.
    totals = [s.total("tongban_requests_total") for s in scrapes]
    assert len(totals) >= 2 and totals == sorted(totals) and totals[-1] > 0, totals


async def test_metrics_after_load(metered: tuple[Metered, SwitchableBackend, Gate]) -> None:
    """After queries, refusals, Submits and a dead letter: every hop of both roles, every
    instrument, the counts of each outcome."""
    m, backend, _ = metered
    stub = m.stack.stub(SZ)
    for _ in range(QUERIES // BATCH):
        answers = await asyncio.gather(*(stub.Query(pension(), timeout=10) for _ in range(BATCH)))
        assert all(a.data for a in answers)
    dead_case, handled = await refused_and_submitted(m)
    # The dead letter's watch ends with it: by then Wuxi's connector has counted everything about it.
    events = await watch(stub, dead_case)
    assert events[-1].delivery_state == exchange_pb2.DELIVERY_STATE_DEAD_LETTERED
    assert backend.calls == ATTEMPTS

    async def connector_done() -> bool:
        wx = await m.scrape(WX, "connector")
        return wx.total("tongban_requests_total", rpc="Submit") >= ATTEMPTS + handled

    await eventually(connector_done, timeout=30, what="Wuxi's connector handled every Submit")

    # -- Shenzhen's gateway: requests by RPC, service, peer and outcome; every gateway hop.
    sz = await m.scrape(SZ, "gateway")
    # The gateway neither consumes requests from JetStream nor dead-letters anything.
    assert_labels(m, sz, absent={"tongban_redeliveries", "tongban_dead_letters"})
    requests = functools.partial(sz.total, "tongban_requests_total", role="gateway", region=SZ)
    assert requests(rpc="Query", service_code=PENSION, peer_region=WX, outcome="OK") == QUERIES
    assert requests(rpc="Query", outcome="INVALID_REQUEST") == 3
    # Refused at validation: neither service nor region is trusted enough to become a label.
    refused = sz.find("tongban_requests_total", outcome="INVALID_REQUEST")
    assert {(s.labels["service_code"], s.labels["peer_region"]) for s in refused} == {("-", "-")}
    assert requests(rpc="Submit", peer_region=WX, outcome="OK") == 1 + handled
    durations = sz.find("tongban_request_duration_seconds_count", rpc="Query", service_code=PENSION)
    assert sum(s.value for s in durations) == QUERIES
    hops = hop_counts(sz)
    assert {h for h, n in hops.items() if n > 0} >= GATEWAY_HOPS, hops
    assert hops[TimedHop.ROUND_TRIP] == QUERIES and hops[TimedHop.VALIDATE] == QUERIES + 3 + 1 + handled
    assert sz.find("tongban_in_flight", rpc="Query")[0].value == 0
    assert sz.find("tongban_nats_connected")[0].value == 1
    gateway = m.stack.nodes[SZ].gateway
    assert gateway is not None
    assert sz.find("tongban_registry_version")[0].value == gateway.registry.version

    async def ledger_sampled() -> bool:
        scrape = await m.scrape(SZ, "gateway")
        return scrape.total("tongban_ledger_entries") == await m.stack.nodes[SZ].ledger.size()

    await eventually(ledger_sampled, what="the ledger gauge follows the ledger")

    # -- Wuxi's connector: requests per handler, every connector hop, redeliveries, dead letters.
    wx = await m.scrape(WX, "connector")
    assert_labels(m, wx, absent={"tongban_peer_reachable"})  # a gateway's gauge
    requests = functools.partial(wx.total, "tongban_requests_total", role="connector", region=WX)
    assert requests(rpc="Query", service_code=PENSION, peer_region=SZ, outcome="OK") == QUERIES
    # Deliveries, not requests (see the instrument's description): one request tried ATTEMPTS times.
    assert requests(rpc="Submit", service_code=CASE_SERVICE, outcome="DEAD_LETTERED") == 1
    assert requests(rpc="Submit", service_code=CASE_SERVICE, outcome="BACKEND_FAILURE") == ATTEMPTS - 1
    assert wx.total("tongban_redeliveries_total", service_code=CASE_SERVICE) == ATTEMPTS - 1
    assert wx.total("tongban_dead_letters_total", service_code=CASE_SERVICE, reason="BACKEND_FAILURE") == 1
    hops = hop_counts(wx)
    assert {h for h, n in hops.items() if n > 0} >= CONNECTOR_HOPS, hops
    assert hops[TimedHop.ADAPTER] >= QUERIES + ATTEMPTS
    assert wx.find("tongban_in_flight", rpc="Query")[0].value == 0
    assert wx.find("tongban_nats_connected")[0].value == 1
    assert {(s.labels["role"], s.labels["region"]) for s in wx.samples if s.name.startswith("tongban_")} == {
        ("connector", WX)
    }


async def test_port_files_and_probes(metered: tuple[Metered, SwitchableBackend, Gate]) -> None:
    """The bound ports are written where the config says; /livez answers; /readyz lists its checks."""
    m, _, _ = metered
    node = m.stack.nodes[SZ]
    for role in ("gateway", "connector"):
        port_file = node.cfg.path(f"{role}-metrics.port")
        assert int(port_file.read_text()) == m.monitors[SZ, role].port
        assert await m.get(SZ, role, "/livez") == (200, "ok\n")
        status, body = await m.get(SZ, role, "/readyz")
        assert status == 200, body
        checks = readyz(body)
        assert all(checks.values()) and {"nats", "ledger", "registry"} <= set(checks)
    status, _ = await m.get(SZ, "gateway", "/nothing-here")
    assert status == 404


async def test_readyz_follows_nats(metered: tuple[Metered, SwitchableBackend, Gate]) -> None:
    """NATS stopped: /readyz 503 naming ``nats`` (liveness unchanged: a restart would not help) and
    the connection gauge 0; NATS back: ready again."""
    m, _, _ = metered
    leaf = m.stack.topology.leaves[SZ]
    await leaf.stop()

    async def not_ready(role: str) -> bool:
        status, body = await m.get(SZ, role, "/readyz")
        return status == 503 and readyz(body)["nats"] is False

    for role in ("gateway", "connector"):
        await eventually(functools.partial(not_ready, role), what=f"{role} not ready without NATS")
        assert await m.get(SZ, role, "/livez") == (200, "ok\n")
        _, body = await m.get(SZ, role, "/readyz")
        checks = readyz(body)
        assert checks["ledger"] is True and checks["registry"] is True, checks
        assert (await m.scrape(SZ, role)).find("tongban_nats_connected")[0].value == 0
    await leaf.start()

    async def ready(role: str) -> bool:
        status, _ = await m.get(SZ, role, "/readyz")
        return status == 200

    for role in ("gateway", "connector"):
        await eventually(functools.partial(ready, role), timeout=20, what=f"{role} ready again")
        assert (await m.scrape(SZ, role)).find("tongban_nats_connected")[0].value == 1
