"""Metrics and the operator endpoint (issue 6, acceptance 3): ``/metrics`` scraped over HTTP during
and after a load run shows non-zero counters and histograms for every hop, with the declared label
sets and nothing else; ``/livez`` and ``/readyz`` follow the process and its NATS connection."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet

import grpc
import pytest

from tests.conftest import SZ, WX
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.metered import Metered, Scrape, readyz, start_metered_stack, stop_metered_stack
from tests.e2e.requests import build, cases, pension
from tests.e2e.test_dead_letters import ATTEMPTS, SwitchableBackend, quick_retry_catalogue
from tests.helpers import eventually
from tongban.catalogue import Catalogue
from tongban.devstate import DevState
from tongban.metrics import INSTRUMENTS, Hop
from tongban.natsserver import Topology
from tongban.v1 import catalogue_pb2, exchange_pb2

QUERIES = 30
PENSION = "SBJFJLCX0001"
GATEWAY_HOPS = {Hop.VALIDATE, Hop.SEAL_SIGN, Hop.ROUND_TRIP, Hop.VERIFY_REPLY, Hop.PUBLISH, Hop.FORWARD}
CONNECTOR_HOPS = {Hop.VERIFY, Hop.OPEN, Hop.ADAPTER, Hop.REPLY, Hop.FORWARD}
# Every label value a series may carry: codes, names and reason codes; nothing else.
SAFE_VALUE = re.compile(
    r"^([0-9]{6}|[A-Za-z0-9]{1,36}|[A-Z][A-Z0-9_]{0,63}|[a-z_]{1,20}|-|\?|[0-9.e+]+|\+Inf)$"
)


@pytest.fixture
async def metered(topology: Topology, state: DevState) -> AsyncIterator[tuple[Metered, SwitchableBackend]]:
    """Shenzhen and Wuxi with metrics; Wuxi's pension-transfer back end fails (fast retries, then
    the dead-letter stream), its other back ends are the demo ones."""
    backend = SwitchableBackend()
    m = await start_metered_stack(
        topology, state, adapters={WX: {CASE_SERVICE: backend}}, catalogue=quick_retry_catalogue()
    )
    try:
        yield m, backend
    finally:
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


async def load(m: Metered) -> tuple[str, int]:
    """30 Queries, three refused ones, Submits that are handled and one that is dead-lettered;
    returns the dead-lettered case number and the number of Submits handled normally."""
    stub = m.stack.stub(SZ)
    for batch in range(QUERIES // 10):
        answers = await asyncio.gather(*(stub.Query(pension(), timeout=10) for _ in range(10)))
        assert all(a.data for a in answers), batch
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


def assert_label_sets(scrape: Scrape, *, absent: AbstractSet[str] = frozenset()) -> None:
    """Each tongban series carries exactly its instrument's labels, with safe values only; every
    instrument but the ``absent`` ones has series."""
    declared = {i.prometheus: set(i.labels) for i in INSTRUMENTS}
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
                assert SAFE_VALUE.match(value), (sample.name, key, value)
    assert seen == set(declared) - absent, set(declared) - seen


def hop_counts(scrape: Scrape) -> dict[str, float]:
    return {
        s.labels["hop"]: s.value for s in scrape.samples if s.name == "tongban_hop_duration_seconds_count"
    }


async def test_metrics_under_load(metered: tuple[Metered, SwitchableBackend]) -> None:
    m, backend = metered
    scrapes: list[Scrape] = []
    done = asyncio.Event()

    async def scrape_during_load() -> None:
        while not done.is_set():
            scrapes.append(await m.scrape(SZ, "gateway"))

    scraper = asyncio.create_task(scrape_during_load())
    try:
        dead_case, handled = await load(m)
    finally:
        done.set()
        await scraper
    assert len(scrapes) >= 2 and any(s.total("tongban_requests_total") > 0 for s in scrapes)
    # The dead letter's watch ends with it: by then Wuxi's connector has counted everything about it.
    events = await watch(m.stack.stub(SZ), dead_case)
    assert events[-1].delivery_state == exchange_pb2.DELIVERY_STATE_DEAD_LETTERED
    assert backend.calls == ATTEMPTS

    async def connector_done() -> bool:
        wx = await m.scrape(WX, "connector")
        return wx.total("tongban_requests_total", rpc="Submit") >= ATTEMPTS + handled

    await eventually(connector_done, timeout=30, what="Wuxi's connector handled every Submit")

    # -- Shenzhen's gateway: requests by RPC, service, peer and outcome; every gateway hop.
    sz = await m.scrape(SZ, "gateway")
    # The gateway neither consumes requests from JetStream nor dead-letters anything.
    assert_label_sets(sz, absent={"tongban_redeliveries", "tongban_dead_letters"})
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
    assert hops[Hop.ROUND_TRIP] == QUERIES and hops[Hop.VALIDATE] == QUERIES + 3 + 1 + handled
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
    assert_label_sets(wx)
    requests = functools.partial(wx.total, "tongban_requests_total", role="connector", region=WX)
    assert requests(rpc="Query", service_code=PENSION, peer_region=SZ, outcome="OK") == QUERIES
    assert requests(rpc="Submit", service_code=CASE_SERVICE, outcome="DEAD_LETTERED") == 1
    assert requests(rpc="Submit", service_code=CASE_SERVICE, outcome="BACKEND_FAILURE") == ATTEMPTS - 1
    assert wx.total("tongban_redeliveries_total", service_code=CASE_SERVICE) == ATTEMPTS - 1
    assert wx.total("tongban_dead_letters_total", service_code=CASE_SERVICE, reason="BACKEND_FAILURE") == 1
    hops = hop_counts(wx)
    assert {h for h, n in hops.items() if n > 0} >= CONNECTOR_HOPS, hops
    assert hops[Hop.ADAPTER] >= QUERIES + ATTEMPTS
    assert wx.find("tongban_in_flight", rpc="Query")[0].value == 0
    assert wx.find("tongban_nats_connected")[0].value == 1
    assert {(s.labels["role"], s.labels["region"]) for s in wx.samples if s.name.startswith("tongban_")} == {
        ("connector", WX)
    }


async def test_port_files_and_probes(metered: tuple[Metered, SwitchableBackend]) -> None:
    """The bound ports are written where the config says; /livez answers; /readyz lists its checks."""
    m, _ = metered
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


async def test_readyz_follows_nats(metered: tuple[Metered, SwitchableBackend]) -> None:
    """NATS stopped: /readyz 503 naming ``nats`` (liveness unchanged: a restart would not help) and
    the connection gauge 0; NATS back: ready again."""
    m, _ = metered
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
