"""The webhook against a real HTTP receiver (aiohttp on a loopback port): signed posts, retries with
back-off while the receiver is down or failing, dead letters after the last attempt, and the
operator putting one back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.backend_api import BackendApi, State
from connectors.backend_api.webhook import jittered, signature, verify_signature
from tests.connectors.backend_api.helpers import (
    WX,
    RecordingCaseWorker,
    api_config,
    case_request,
    region_keys,
)
from tests.connectors.backend_api.receiver import SECRET, Receiver
from tests.helpers import eventually, free_port
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config
from tongban.runtime.metrics import Metrics


def webhook_config(tmp_path: Path, url: str, **more: object) -> Config:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    settings: dict[str, object] = {
        "listen": "",
        "webhook_url": url,
        "webhook_secret_file": str(secret),
        "webhook_backoff_s": [0.05, 0.1],
        "webhook_timeout_s": 2.0,
    }
    return api_config(tmp_path, **(settings | more))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        await r.stop()


async def started(cfg: Config, metrics: Metrics | None = None) -> BackendApi:
    api = BackendApi(
        cfg, secrets=region_keys(), catalogue=Catalogue.load(), metrics=metrics or Metrics.disabled()
    )
    await api.start(RecordingCaseWorker().report_status)
    return api


async def test_each_delivery_is_posted_signed_and_acknowledged_by_a_2xx(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.start()
    api = await started(webhook_config(tmp_path, receiver.url()))
    try:
        request = case_request()
        await api.adapter().submit_case(request)
        await eventually(lambda: len(receiver.received) == 1, what="the delivery posted")
        d = receiver.received[0]
        assert (d["deliveryId"], d["caseNo"], d["serviceCode"], d["attempt"]) == (
            request.message_id,
            request.case_no,
            request.service_code,
            1,
        )
        assert d["applicant"]["name"] == "张三" and d["fields"]["new_employer_name"] == "无锡某公司"
        await eventually(
            lambda: api.pusher is not None and api.pusher.delivered == 1, what="acknowledged in the queue"
        )
        [row] = await api.queue.rows()
        assert (row.state, row.acked_via) == (State.ACKED, "webhook")
        assert receiver.forged == 0 and receiver.answers == [200]
    finally:
        await api.stop()


async def test_a_receiver_that_is_down_gets_the_delivery_when_it_comes_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    api = await started(webhook_config(tmp_path, receiver.url(port)))
    try:
        request = case_request()
        await api.adapter().submit_case(request)

        async def tried_twice() -> bool:
            return any(r.push_attempts >= 2 for r in await api.queue.rows())

        await eventually(tried_twice, what="posts refused while the receiver is not up")
        receiver.failing = 2  # up, but in trouble for two more posts (503)
        await receiver.start(port)
        await eventually(lambda: len(receiver.received) == 1, what="delivered once it is back")
        assert receiver.received[0]["deliveryId"] == request.message_id
        assert receiver.answers == [503, 503, 200]
    finally:
        await api.stop()


async def test_dead_after_the_last_attempt_then_put_back_by_the_operator(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.failing = 1000
    receiver.fail_status = 500
    await receiver.start()
    metrics = Metrics("connector", WX, services=Catalogue.load().codes())
    api = await started(webhook_config(tmp_path, receiver.url(), webhook_max_attempts=3), metrics)
    try:
        request = case_request()
        await api.adapter().submit_case(request)

        async def dead() -> bool:
            return [r.state for r in await api.queue.rows()] == [State.DEAD]

        await eventually(dead, what="dead-lettered")
        assert receiver.answers == [500, 500, 500]
        assert api.pusher is not None and api.pusher.dead == 1
        assert b'tongban_dead_letters_total{reason="BACKEND_FAILURE"' in metrics.render()
        receiver.failing = 0
        assert await api.queue.requeue(request.message_id)  # what `tongban case deliveries --requeue` does
        await eventually(lambda: len(receiver.received) == 1, what="delivered after the requeue")
        assert receiver.answers == [500, 500, 500, 200]
    finally:
        await api.stop()
        metrics.shutdown()


def test_the_signature_scheme() -> None:
    body = b'{"deliveryId":"X"}'
    header = signature(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.partition("v1=")[2]) == 64
    assert verify_signature(SECRET, header, body, now_s=1_700_000_100)
    assert not verify_signature(SECRET, header, body + b" ", now_s=1_700_000_100)
    assert not verify_signature(b"another secret of sixteen bytes", header, body, now_s=1_700_000_100)
    assert not verify_signature(SECRET, header, body, now_s=1_700_001_000)  # too old
    assert not verify_signature(SECRET, "v1=00", body, now_s=1_700_000_100)
    assert all(0.5 <= jittered(1.0) <= 1.0 for _ in range(100))


def test_webhook_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="https outside dev mode"):
        cfg = webhook_config(tmp_path, "http://case-system.internal/hook")
        cfg.gateway.dev_mode = False
        BackendApi(cfg, secrets=region_keys(), catalogue=Catalogue.load())
    with pytest.raises(ConfigError, match="http"):
        BackendApi(webhook_config(tmp_path, "ftp://x/y"), secrets=region_keys(), catalogue=Catalogue.load())
    cfg = webhook_config(tmp_path, "https://case-system.internal/hook")
    (tmp_path / "webhook.secret").write_bytes(b"short")
    with pytest.raises(ConfigError, match="16 bytes"):
        BackendApi(cfg, secrets=region_keys(), catalogue=Catalogue.load())
