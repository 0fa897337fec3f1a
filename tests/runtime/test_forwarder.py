"""tongban/runtime/forwarder.py: what a forwarder is built with (its forwarding runs in tests/e2e and
tests/connectors, against real nats-servers)."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NATS

from tongban.core import subjects
from tongban.runtime.config import Config
from tongban.runtime.forwarder import Forwarder
from tongban.runtime.metrics import NO_METRICS


def test_for_config_reads_the_regions_forwarding_settings(tmp_path: Path) -> None:
    cfg = Config.from_dict(
        {
            "region": {"code": "440300"},
            "gateway": {"ack_wait_s": 7.0, "forward_retry_max_s": 3.0, "publish_timeout_s": 1.5},
        },
        base_dir=tmp_path,
        env={},
    )

    async def expired(message_id: str, to: str, msg: object) -> None:
        return None

    fw = Forwarder.for_config(cfg, NATS(), subjects.OutKind.REQUEST, NO_METRICS, on_expired=expired)
    assert (fw.region, fw.kind, fw.durable) == (
        "440300",
        subjects.OutKind.REQUEST,
        subjects.Durable.FORWARD_REQUESTS,
    )
    assert (fw.ack_wait_s, fw.retry_max_s, fw.publish_timeout_s) == (7.0, 3.0, 1.5)
    assert fw.on_expired is expired and fw.on_forwarded is None and fw.metrics is NO_METRICS
