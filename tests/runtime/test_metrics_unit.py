"""tongban/runtime/metrics.py, operator_endpoint.py and monitor.py on their own: label values are
cleaned whatever a caller passes, components in one process do not share instruments, the operator
endpoint starts and stops cleanly (and says so when its port is taken), and readiness probes the
ledger once per component."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tongban.core.errors import ConfigError, InvalidRequest
from tongban.runtime.config import Config
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import NO_METRICS, Metrics, label_request, set_outcome
from tongban.runtime.monitor import ComponentMonitor
from tongban.runtime.operator_endpoint import OperatorEndpoint, parse_listen

ID_NO = "44030419900307123X"
PHONE = "13800138000"
SERVICES = ["SBJFJLCX0001", "YLBXZYJX0001"]


def samples(m: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    text = m.render().decode()
    return [
        (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]


def test_labels_never_carry_what_a_caller_passes() -> None:
    m = Metrics("gateway", "440300", services=SERVICES)
    with m.request("Query", service_code=ID_NO, peer_region="320200"):
        set_outcome(f"refused {ID_NO}")
    with m.request("Query", service_code="SBJFJLCX0001", peer_region=ID_NO):
        pass
    m.dead_lettered(ID_NO, "BACKEND_FAILURE")
    text = m.render().decode()
    assert ID_NO not in text and ID_NO[:10] not in text
    got = {
        (labels["service_code"], labels["peer_region"], labels["outcome"])
        for labels, _ in samples(m, "tongban_requests_total")
    }
    assert got == {("?", "320200", "OTHER"), ("SBJFJLCX0001", "?", "OK")}
    m.shutdown()


def test_services_are_a_required_vocabulary() -> None:
    """No default that would take any code-shaped value (an ID number is one) as a service label."""
    with pytest.raises(TypeError):
        Metrics("gateway", "440300")  # type: ignore[call-arg]


@pytest.mark.parametrize("role", ["gateway", "connector"])
def test_id_number_service_and_phone_peer_never_reach_the_text(role: str) -> None:
    """An ID-number-shaped service code and a phone-shaped peer region, through every path that
    takes them (request arguments, label_request from a handler, redeliveries, dead letters)."""
    m = Metrics(role, "440300", services=SERVICES)
    for service, peer in ((ID_NO, PHONE), (ID_NO.lower(), PHONE + "\n"), ("SBJFJLCX0001", PHONE)):
        with m.request("Query", service_code=service, peer_region=peer):
            pass
        with m.request("Submit"):
            label_request(service, peer)
            set_outcome(PHONE)
        m.redelivered(service)
        m.dead_lettered(service, ID_NO)
    text = m.render().decode()
    for secret in (ID_NO, ID_NO.lower(), ID_NO[6:14], PHONE, PHONE[:7]):
        assert secret not in text, secret
    values = {
        (k, v)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        for k, v in s.labels.items()
        if k in ("service_code", "peer_region", "outcome", "reason")
    }
    assert values == {
        ("service_code", "?"),
        ("service_code", "SBJFJLCX0001"),
        ("peer_region", "?"),
        ("outcome", "OK"),
        ("outcome", "OTHER"),
        ("reason", "OTHER"),
    }
    m.shutdown()


def test_in_flight_and_counts_are_read_at_the_scrape() -> None:
    m = Metrics("connector", "320200", services=SERVICES)
    with m.request("Query", service_code="SBJFJLCX0001", peer_region="440300"):
        assert [v for _, v in samples(m, "tongban_in_flight")] == [1]
    for _ in range(3):
        with m.request("Query", service_code="SBJFJLCX0001", peer_region="440300"):
            set_outcome("NOT_FOUND")
    assert [v for _, v in samples(m, "tongban_in_flight")] == [0]
    counts = {lbl["outcome"]: v for lbl, v in samples(m, "tongban_requests_total")}
    assert counts == {"OK": 1, "NOT_FOUND": 3}
    assert [v for _, v in samples(m, "tongban_request_duration_seconds_count")] == [4]
    m.shutdown()


def test_exceptions_set_the_outcome() -> None:
    m = Metrics("connector", "320200", services=SERVICES)
    with pytest.raises(InvalidRequest), m.request("Submit"):
        raise InvalidRequest("bad")
    with pytest.raises(RuntimeError), m.request("Submit"):
        raise RuntimeError("bug")
    outcomes = {labels["outcome"]: v for labels, v in samples(m, "tongban_requests_total")}
    assert outcomes == {"INVALID_REQUEST": 1, "INTERNAL": 1}
    assert [v for _, v in samples(m, "tongban_in_flight")] == [0]
    m.shutdown()


def test_components_in_one_process_keep_their_own_instruments() -> None:
    a, b = Metrics("gateway", "440300", services=SERVICES), Metrics("gateway", "320200", services=SERVICES)
    with a.hop(TimedHop.VALIDATE):
        pass
    assert [lbl["region"] for lbl, _ in samples(a, "tongban_hop_duration_seconds_count")] == ["440300"]
    assert samples(b, "tongban_hop_duration_seconds_count") == []
    with NO_METRICS.request("Query"), NO_METRICS.hop(TimedHop.ADAPTER):
        set_outcome("OK")
    assert NO_METRICS.render() == b""
    a.shutdown()
    b.shutdown()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", ":9464", "host:99999"):
        with pytest.raises(Exception, match="host:port"):
            parse_listen(bad)


async def test_endpoint_starts_stops_and_reports_a_failing_readiness_check() -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("cannot tell")

    m = Metrics("gateway", "440300", services=SERVICES)
    endpoint = OperatorEndpoint("127.0.0.1:0", m, readiness=broken)
    async with endpoint:
        url = f"http://127.0.0.1:{endpoint.port}/readyz"

        def get() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert await asyncio.to_thread(get) == (503, b'{"readiness": false}\n')
    await endpoint.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(urllib.request.urlopen, url, None, 2)
    m.shutdown()


async def test_a_taken_port_is_a_config_error() -> None:
    m = Metrics("gateway", "440300", services=SERVICES)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = OperatorEndpoint(f"127.0.0.1:{port}", m)
        with pytest.raises(ConfigError) as err:
            await endpoint.start()
    assert str(err.value.message).startswith(
        f"cannot listen on 127.0.0.1:{port} for the metrics endpoint: "
    ), err.value.message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    await endpoint.stop()  # nothing was started: still fine
    m.shutdown()


class _Ledger:
    def __init__(self) -> None:
        self.reads = 0

    async def size(self) -> int:
        self.reads += 1
        return 7


async def test_readiness_probes_the_ledger_once_per_component() -> None:
    """A component that probes its ledger (the gateway) keeps its own check, so /readyz and gRPC
    health agree; one that does not (the connector) gets the sampler's."""
    own = {"nats": True, "ledger": False}
    monitors = {
        name: ComponentMonitor(
            Config(),
            role,
            Metrics(role, "440300", services=SERVICES),
            ledger=_Ledger(),
            registry=SimpleNamespace(version=3),
            nats_connected=lambda: True,
            readiness=readiness,
        )
        for name, role, readiness in (
            ("probes", "gateway", lambda: dict(own)),
            ("does not", "connector", lambda: {"nats": True}),
        )
    }
    for monitor in monitors.values():
        await monitor.sampler.sample()  # the ledger answers
        assert monitor.sampler.ok
    assert monitors["probes"].ready() == {"nats": True, "ledger": False}  # its own probe decides
    own["ledger"] = True
    assert monitors["probes"].ready() == {"nats": True, "ledger": True}
    assert monitors["does not"].ready() == {"nats": True, "ledger": True}
    monitors["does not"].sampler.ok = False  # its last read failed
    assert monitors["does not"].ready() == {"nats": True, "ledger": False}
    for monitor in monitors.values():
        await monitor.stop()
