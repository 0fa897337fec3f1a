"""Creating a region's JetStream streams and durable consumers (idempotent, at every process start).

Every process of a region calls :func:`ensure_streams` before it consumes or publishes: the first
creates, the others find them in place. A stream that exists with other settings is updated to
ours (the configs below are the definition of record; the subject names are ``tongban.core.subjects``).
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from tongban.core import subjects
from tongban.core.errors import Unavailable

log = structlog.get_logger("tongban.runtime.streams")


def jetstream(nc: NATS, region: str, *, timeout: float = 5.0) -> JetStreamContext:
    """The JetStream API of ``region``'s own domain (never another region's)."""
    return nc.jetstream(domain=region, timeout=timeout)


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # 10058: a stream of this name exists with other settings.
        if exc.err_code != 10058:
            raise
        await js.update_stream(config)


async def ensure_streams(
    nc: NATS, region: str, *, duplicate_window_s: float = 24 * 3600, replicas: int = 1, timeout: float = 15.0
) -> JetStreamContext:
    """Create or update ``region``'s streams; retry while its JetStream is not yet up.

    Raises:
        Unavailable: JetStream did not answer within ``timeout``.
    """
    js = jetstream(nc, region)
    deadline = time.monotonic() + timeout
    while True:
        try:
            for config in region_streams(region, duplicate_window_s=duplicate_window_s, replicas=replicas):
                await _ensure(js, config)
            return js
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
            nats.errors.ConnectionReconnectingError,
            TimeoutError,
        ) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"JetStream of region {region} is not available") from exc
            log.info("streams.waiting", region=region, error=type(exc).__name__)
            await asyncio.sleep(0.2)


async def durable_pull(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    filter_subject: str,
    ack_wait_s: float,
    max_ack_pending: int,
) -> JetStreamContext.PullSubscription:
    """Create (or update) a durable pull consumer and bind to it. Explicit acks and no server-side
    delivery cap: attempts are counted and capped by the consumer's owner, per service. Every
    replica of a role binds to the same durable, so they split the work."""
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            filter_subject=filter_subject,
            max_ack_pending=max_ack_pending,
            max_waiting=512,
        ),
    )
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


def inbound_stream(region: str, *, duplicate_window_s: float = 24 * 3600) -> StreamConfig:
    """The durable inbound request stream of ``region`` (file storage, work queue).

    ``duplicate_window`` must outlast any resend delay: dedup by ``Nats-Msg-Id`` holds only inside it.
    """
    return _durable_stream(
        subjects.inbound_stream_name(region),
        subjects.request_wildcard(region),
        duplicate_window_s,
        RetentionPolicy.WORK_QUEUE,
    )


def _durable_stream(
    name: str, subject: str, duplicate_window_s: float, retention: RetentionPolicy
) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window_s,
        num_replicas=1,
    )


def outbound_stream(region: str, *, duplicate_window_s: float = 24 * 3600) -> StreamConfig:
    """``region``'s store-and-forward stream: requests and events waiting for their destination."""
    return _durable_stream(
        subjects.outbound_stream_name(region),
        subjects.outbound_wildcard(region),
        duplicate_window_s,
        RetentionPolicy.WORK_QUEUE,
    )


def event_stream(region: str, *, duplicate_window_s: float = 24 * 3600) -> StreamConfig:
    """Case status events addressed to ``region``, consumed by its gateways."""
    return _durable_stream(
        subjects.event_stream_name(region),
        subjects.event_wildcard(region),
        duplicate_window_s,
        RetentionPolicy.WORK_QUEUE,
    )


def dlq_stream(region: str) -> StreamConfig:
    """Dead letters of ``region``'s connectors: kept (limits retention) until replayed or purged."""
    return _durable_stream(
        subjects.dlq_stream_name(region), subjects.dlq_wildcard(region), 120.0, RetentionPolicy.LIMITS
    )


def region_streams(
    region: str, *, duplicate_window_s: float = 24 * 3600, replicas: int = 1
) -> list[StreamConfig]:
    """Every stream a region's nats-server holds; ``replicas`` 3 on a region's 3-node cluster."""
    configs = [
        inbound_stream(region, duplicate_window_s=duplicate_window_s),
        outbound_stream(region, duplicate_window_s=duplicate_window_s),
        event_stream(region, duplicate_window_s=duplicate_window_s),
        dlq_stream(region),
    ]
    for c in configs:
        c.num_replicas = replicas
    return configs


def stream_subjects_overlap_rpc(config: StreamConfig) -> bool:
    """True if any subject of ``config`` could capture an RPC or ping subject."""
    for subject in config.subjects or []:
        tokens = subject.split(".")
        for probe in (f"{subjects.PREFIX}.rpc.x.y", f"{subjects.PREFIX}.ping.x"):
            if _matches(tokens, probe.split(".")):
                return True
    return False


def _matches(pattern: list[str], subject: list[str]) -> bool:
    for i, tok in enumerate(pattern):
        if tok == ">":
            return len(subject) > i
        if i >= len(subject) or (tok != "*" and tok != subject[i]):
            return False
    return len(pattern) == len(subject)
