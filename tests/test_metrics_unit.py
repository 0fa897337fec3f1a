"""tongban/metrics.py on its own: label values are cleaned whatever a caller passes, components in one
process do not share instruments, and the operator endpoint starts and stops cleanly."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tongban.errors import InvalidRequest
from tongban.metrics import NO_METRICS, Hop, Metrics, OperatorEndpoint, parse_listen, set_outcome

ID_NO = "44030419900307123X"


def samples(m: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    text = m.render().decode()
    return [
        (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]


def test_labels_never_carry_what_a_caller_passes() -> None:
    m = Metrics("gateway", "440300", services=["SBJFJLCX0001"])
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


def test_exceptions_set_the_outcome() -> None:
    m = Metrics("connector", "320200")
    with pytest.raises(InvalidRequest), m.request("Submit"):
        raise InvalidRequest("bad")
    with pytest.raises(RuntimeError), m.request("Submit"):
        raise RuntimeError("bug")
    outcomes = {labels["outcome"]: v for labels, v in samples(m, "tongban_requests_total")}
    assert outcomes == {"INVALID_REQUEST": 1, "INTERNAL": 1}
    assert [v for _, v in samples(m, "tongban_in_flight")] == [0]
    m.shutdown()


def test_components_in_one_process_keep_their_own_instruments() -> None:
    a, b = Metrics("gateway", "440300"), Metrics("gateway", "320200")
    with a.hop(Hop.VALIDATE):
        pass
    assert [lbl["region"] for lbl, _ in samples(a, "tongban_hop_duration_seconds_count")] == ["440300"]
    assert samples(b, "tongban_hop_duration_seconds_count") == []
    with NO_METRICS.request("Query"), NO_METRICS.hop(Hop.ADAPTER):
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

    m = Metrics("gateway", "440300")
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
