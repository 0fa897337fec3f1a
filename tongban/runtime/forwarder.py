"""Store and forward: moves a region's outbound stream into other regions' streams.

Where it fits: docs/architecture.md, "One Submit (durable case delivery)", step 3; why a forwarder
and not stream sourcing across the hub: the same page, "The forwarder … carries both ways".

A message accepted by a region waits in its own ``OUT_<region>`` stream (work queue, file storage)
until a forwarder of that region publishes it to the destination region's stream with
``Nats-Msg-Id`` = the message id, and acks it only after the destination's PubAck. A destination
that is down (its leaf, or the hub) is retried with capped back-off; nothing is lost and, thanks to
the destination's duplicate window and the receiver's own processed-message record, nothing is
applied twice. Requests carry their deadline in a header: once it has passed and the destination
cannot be reached, the forwarder stops trying and reports the expiry instead.

Gateways forward requests, connectors forward status events: two durable consumers with disjoint
filters on the same stream, each shared by the replicas of its role.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tongban.core import subjects
from tongban.runtime import telemetry
from tongban.runtime.config import Config
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.pull_worker import PullWorker
from tongban.runtime.shutdown import Deadline
from tongban.runtime.streams import durable_pull, jetstream

log = structlog.get_logger("tongban.runtime.forwarder")
_tracer = trace.get_tracer("tongban.runtime.forwarder")

OnForwarded = Callable[[str, str, Msg], Awaitable[None]]
"""(message id, destination region, the outbound message)."""

_TRANSIENT = (
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.ServiceUnavailableError,
)


def _delivered(msg: Msg) -> int:
    """How many times JetStream has delivered ``msg`` (1 on the first delivery)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


class Forwarder:
    """One region's forwarder of one kind of outbound message. ``start()``/``stop()``, idempotent."""

    def __init__(
        self,
        nc: NATS,
        region: str,
        kind: subjects.OutKind,
        *,
        on_forwarded: OnForwarded | None = None,
        on_expired: OnForwarded | None = None,
        ack_wait_s: float = 10.0,
        batch: int = 128,
        retry_max_s: float = 2.0,
        publish_timeout_s: float = 2.0,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.metrics = metrics
        self.nc = nc
        self.region = region
        self.kind = kind
        self.on_forwarded = on_forwarded
        self.on_expired = on_expired
        self.ack_wait_s = ack_wait_s
        self.batch = batch
        self.retry_max_s = retry_max_s
        self.publish_timeout_s = publish_timeout_s
        self.durable = (
            subjects.Durable.FORWARD_REQUESTS
            if kind is subjects.OutKind.REQUEST
            else subjects.Durable.FORWARD_EVENTS
        )
        self.forwarded = 0
        self._js: JetStreamContext | None = None
        self._worker = PullWorker(self._forward_batch, batch=batch, events="forwarder")

    @classmethod
    def for_config(
        cls,
        cfg: Config,
        nc: NATS,
        kind: subjects.OutKind,
        metrics: Metrics,
        *,
        on_forwarded: OnForwarded | None = None,
        on_expired: OnForwarded | None = None,
    ) -> Forwarder:
        """The forwarder of ``kind`` for ``cfg``'s region, with the stream settings of ``[gateway]``
        (``ack_wait_s``, ``forward_retry_max_s``, ``publish_timeout_s``), which gateways and
        connectors share: both forward across the same hub."""
        gw = cfg.gateway
        return cls(
            nc,
            cfg.region.code,
            kind,
            on_forwarded=on_forwarded,
            on_expired=on_expired,
            ack_wait_s=gw.ack_wait_s,
            retry_max_s=gw.forward_retry_max_s,
            publish_timeout_s=gw.publish_timeout_s,
            metrics=metrics,
        )

    async def start(self) -> None:
        if self._worker.running:
            return
        js = jetstream(self.nc, self.region)
        sub = await durable_pull(
            js,
            subjects.outbound_stream_name(self.region),
            self.durable,
            filter_subject=subjects.outbound_filter(self.region, self.kind),
            ack_wait_s=self.ack_wait_s,
            max_ack_pending=self.batch * 4,
        )
        self._js = js
        self._worker.start(sub, task_name=f"forwarder-{self.kind.value}")

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Finish the batch in hand (its messages are acked or nakked), then stop: within one
        publish timeout and a margin, and ``deadline``; cancelled beyond that (what was not acked
        is redelivered to the region's next forwarder after the ack wait)."""
        cap = self.publish_timeout_s + 2.0
        await self._worker.stop(
            timeout=deadline.budget(cap) if deadline else cap, what=f"forwarder {self.kind.value}"
        )

    async def _forward_batch(self, msgs: list[Msg]) -> None:
        for result in await asyncio.gather(*(self._forward(m) for m in msgs), return_exceptions=True):
            if isinstance(result, Exception):  # not acked: redelivered after the ack wait
                log.warning("forwarder.failed", error=type(result).__name__)

    def _retry_delay(self, msg: Msg) -> float:
        return min(0.1 * 2 ** min(_delivered(msg), 10), self.retry_max_s)

    async def _forward(self, msg: Msg) -> None:
        try:
            kind, dest, to, svc, mid = subjects.destination_of(msg.subject)
        except ValueError:
            log.error("forwarder.bad_subject")
            await msg.term()
            return
        headers = dict(msg.headers or {})
        # One hop of the trace the message belongs to (named by the traceparent the gateway or
        # connector put on it); the destination's consumer continues below this span.
        wildcard = (
            subjects.request_wildcard(to) if kind is subjects.OutKind.REQUEST else subjects.event_wildcard(to)
        )
        with _tracer.start_as_current_span(
            f"forward {wildcard}",
            context=telemetry.context_from_traceparent(headers.get(subjects.Header.TRACEPARENT, "")),
            kind=SpanKind.PRODUCER,
            attributes={
                **telemetry.messaging_attributes(dest, mid, to, svc, operation="forward"),
                "messaging.message.delivery_count": _delivered(msg),
            },
        ):
            await self._send_on(msg, headers, dest, to, mid)

    async def _send_on(self, msg: Msg, headers: dict[str, str], dest: str, to: str, mid: str) -> None:
        try:
            deadline_ms = int(headers.get(subjects.Header.DEADLINE_MS, "0"))
        except ValueError:
            deadline_ms = 0
        # Past its deadline a request is still offered to the destination once more: an earlier
        # attempt may have reached it (its PubAck lost in a crash), and then only the destination
        # knows whether it was processed; it refuses anything expired and says so, signed. Only a
        # destination that cannot be reached now makes the expiry final here.
        expired = bool(deadline_ms) and time.time() * 1000 > deadline_ms
        out_headers: dict[str, str] = {
            subjects.Header.MSG_ID: mid,
            subjects.Header.MESSAGE_ID: mid,
            subjects.Header.FROM_REGION: self.region,
        }
        if subjects.Header.DEADLINE_MS in headers:
            out_headers[subjects.Header.DEADLINE_MS] = headers[subjects.Header.DEADLINE_MS]
        if traceparent := telemetry.current_traceparent() or headers.get(subjects.Header.TRACEPARENT, ""):
            out_headers[subjects.Header.TRACEPARENT] = traceparent
        try:
            assert self._js is not None
            with self.metrics.hop(TimedHop.FORWARD):
                await self._js.publish(dest, msg.data, timeout=self.publish_timeout_s, headers=out_headers)
        except (*_TRANSIENT, nats.js.errors.APIError) as exc:
            if expired:
                if self.on_expired is not None:
                    await self.on_expired(mid, to, msg)
                await msg.ack_sync(timeout=self.publish_timeout_s)
                log.warning("forwarder.expired", message_id=mid, peer_region=to)
            elif isinstance(exc, nats.js.errors.APIError):
                # The destination refused it (e.g. its stream is full): retry later, slowly.
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.retry_max_s)
                log.warning("forwarder.refused", message_id=mid, peer_region=to, error=exc.description)
            else:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._retry_delay(msg))
                log.debug("forwarder.retry", message_id=mid, peer_region=to, error=type(exc).__name__)
            return
        try:
            if self.on_forwarded is not None:
                await self.on_forwarded(mid, to, msg)
            await msg.ack()
            self.forwarded += 1
        except Exception as exc:
            # Not acked: redelivered after ack_wait; the destination drops the duplicate.
            log.warning("forwarder.ack_failed", message_id=mid, error=type(exc).__name__)
