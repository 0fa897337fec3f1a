"""The sending side of durable delivery after a Submit is accepted: the outbound stream, the request
forwarder's reports, and the reconciler.

An accepted case's sealed request waits in its case row (the outbox) until ``OUT_<region>``
acknowledges it (:meth:`Outbox.publish`); from there the region's request forwarder carries it to
the handling region's inbound stream and reports back: forwarded (PUBLISHED in the ledger, the case
FORWARDED) or expired in the stream (EXPIRED in both).

The reconciler closes the gaps a crash can leave: on start and every ``[gateway]
reconcile_interval_s`` it completes a missing SUBMITTED entry, publishes what the outbound stream
never acknowledged, and re-sends what was accepted long ago and is neither forwarded nor still in the
outbound stream. Re-sending is always safe: the outbound and inbound streams drop duplicates by
``Nats-Msg-Id`` and the connector keeps its own record of what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from gateway.case_watch import CaseWatchers
from gateway.cases import CaseRow, CaseStore
from gateway.exchange import ExchangeCore
from ledger import Event
from tongban.core import subjects
from tongban.core.details import Detail
from tongban.core.errors import Reason
from tongban.runtime.forwarder import Forwarder
from tongban.runtime.instruments import TimedHop
from tongban.runtime.shutdown import Deadline, finish_tasks
from tongban.v1 import exchange_pb2

log = structlog.get_logger("tongban.gateway")

_STOP_S: Final = 3.0
"""How long a stop waits for a reconciler pass and the bookkeeping in flight to end."""

_TRANSIENT = (
    nats.errors.TimeoutError,
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)
"""What a publish to the outbound stream can fail with that a later attempt may not."""


class Outbox:
    """The outbound side of one gateway's case desk. ``start()``/``stop()``, idempotent.

    Args:
        core: the gateway's request logic (configuration, ledger, metrics).
        cases: the region's case store.
        nc: the gateway's NATS connection.
        watchers: woken when a case's delivery moves on.
    """

    def __init__(self, core: ExchangeCore, cases: CaseStore, nc: NATS, watchers: CaseWatchers) -> None:
        self.cfg = core.cfg
        self.region = core.region
        self.ledger = core.ledger
        self.metrics = core.metrics
        self.cases = cases
        self.watchers = watchers
        self.forwarder = Forwarder.for_config(
            core.cfg,
            nc,
            subjects.OutKind.REQUEST,
            core.metrics,
            on_forwarded=self._on_forwarded,
            on_expired=self._on_expired,
        )
        self._js: JetStreamContext | None = None
        self._stopping = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, js: JetStreamContext) -> None:
        """Publish through ``js`` (the region's JetStream domain), forward, reconcile."""
        if self._js is not None:
            return
        self._js = js
        self._stopping.clear()
        await self.forwarder.start()
        self._reconciler = asyncio.create_task(self._reconcile_loop(), name="reconciler")
        self._reconciler.add_done_callback(self._reconciler_ended)

    def begin_stop(self) -> None:
        """Set the stop flag: no pass begins, the one running ends after its case in hand."""
        self._stopping.set()

    async def stop(self, deadline: Deadline) -> None:
        """End the reconciler and the bookkeeping in flight (cancelled if they overrun) and stop the
        forwarder, each within its share of ``deadline``."""
        self._js = None
        self.begin_stop()
        tasks = [t for t in (self._reconciler, *self._background) if t is not None]
        self._reconciler = None
        await asyncio.gather(
            finish_tasks(tasks, timeout=deadline.budget(_STOP_S), what="case desk"),
            self.forwarder.stop(deadline),
        )

    async def publish(self, row: CaseRow, *, msg_id: str | None = None) -> bool:
        """Put the request into the outbound stream; False if the stream did not acknowledge it
        (the case stays in the outbox for the reconciler)."""
        assert self._js is not None or self._stopping.is_set()
        if self._js is None:
            return False
        headers: dict[str, str] = {
            subjects.Header.MSG_ID: msg_id or row.message_id,
            subjects.Header.MESSAGE_ID: row.message_id,
            subjects.Header.DEADLINE_MS: str(row.deadline_ms),
        }
        if row.traceparent:
            headers[subjects.Header.TRACEPARENT] = row.traceparent
        try:
            with self.metrics.hop(TimedHop.PUBLISH):
                await self._js.publish(
                    row.out_subject, row.envelope, timeout=self.cfg.gateway.publish_timeout_s, headers=headers
                )
        except (*_TRANSIENT, nats.js.errors.APIError) as exc:
            log.warning("submit.outbox_pending", message_id=row.message_id, error=type(exc).__name__)
            return False
        # Off the caller's path: the flag only spares the reconciler a look into the stream, and a
        # lost flag makes it publish again under the same Nats-Msg-Id, which the stream drops.
        task = asyncio.create_task(self.cases.mark_published(row.message_id))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return True

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("casedesk.background_failed", error=type(task.exception()).__name__)

    # -- the forwarder's reports ---------------------------------------------------------------

    async def _on_forwarded(self, message_id: str, to: str, msg: Msg) -> None:
        row = await self.cases.by_message_id(message_id)
        if row is None:
            return
        # The record, not the case's state, decides: the handling region's events may already
        # have moved the case on by the time this acknowledgement is handled.
        if not any(e.event == Event.PUBLISHED for e in await self.ledger.by_message_id(message_id)):
            await self.ledger.append(
                row.entry(Event.PUBLISHED, Detail(stream=subjects.inbound_stream_name(to)))
            )
        if await self.cases.set_delivery(message_id, exchange_pb2.DELIVERY_STATE_FORWARDED) is not None:
            await self.watchers.changed(row.case_no)

    async def _on_expired(self, message_id: str, to: str, msg: Msg) -> None:
        await self._expire(message_id)

    async def _expire(self, message_id: str) -> None:
        row = await self.cases.by_message_id(message_id)
        if row is None or row.delivery >= exchange_pb2.DELIVERY_STATE_FORWARDED:
            return
        await self.ledger.append(
            row.entry(Event.EXPIRED, Detail(outcome=Reason.NOT_DELIVERED_BEFORE_DEADLINE), digest=b"")
        )
        await self.cases.set_delivery(message_id, exchange_pb2.DELIVERY_STATE_EXPIRED)
        await self.watchers.changed(row.case_no)

    # -- the reconciler --------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                await self.reconcile(everything=first)
                first = False
            except Exception as exc:
                log.warning("reconciler.failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.gateway.reconcile_interval_s):
                    await self._stopping.wait()

    def _reconciler_ended(self, task: asyncio.Task[None]) -> None:
        """The reconciler catches its errors; one that ends anyway, outside a stop, is a bug the
        operator must see."""
        if not self._stopping.is_set():
            error = None if task.cancelled() else task.exception()
            log.error(
                "casedesk.loop_ended", loop=task.get_name(), error=type(error).__name__ if error else None
            )

    async def reconcile(self, *, everything: bool = False) -> int:
        """One pass over the cases still only accepted; returns how many were (re-)sent.

        ``everything`` includes cases accepted a moment ago (at start-up: a crash may have left
        them); a periodic pass leaves the youngest to the Submit that is still writing them.
        """
        gw = self.cfg.gateway
        now = time.time()
        before_ns = int((now if everything else now - 2 * gw.publish_timeout_s) * 1e9)
        sent = 0
        cursor: tuple[int, str] = (0, "")
        while not self._stopping.is_set():
            page = await self.cases.in_transit(accepted_before_ns=before_ns, after=cursor)
            if not page:
                break
            cursor = (page[-1].accepted_ns, page[-1].message_id)
            for listed in page:
                if self._stopping.is_set():
                    break
                sent += await self._reconcile_one(listed.message_id, now)
        if sent:
            log.info("reconciler.sent", count=sent)
        return sent

    async def _reconcile_one(self, message_id: str, now: float) -> int:
        gw = self.cfg.gateway
        # Fresh: the forwarder may have moved it on since the page was read.
        row = await self.cases.by_message_id(message_id)
        if row is None or row.delivery > exchange_pb2.DELIVERY_STATE_ACCEPTED:
            return 0
        age = now - row.accepted_ns / 1e9
        entries = await self.ledger.by_message_id(row.message_id)
        if not any(e.event == Event.SUBMITTED for e in entries):
            if age < gw.max_deadline_s:
                return 0  # a Submit (here or on another replica) may still be writing its record
            # Accepted into the outbox, then a crash before the ledger: complete the record first.
            await self.ledger.append(row.entry(Event.SUBMITTED, Detail(case_no=row.case_no)))
        if now * 1000 > row.deadline_ms and not await self._in_outbound(row):
            await self._expire(row.message_id)
            return 0
        if not row.published:
            return 1 if await self.publish(row) else 0
        if age < gw.resend_after_s or await self._in_outbound(row):
            return 0
        # The ledger says accepted, the stream no longer has it, nothing says it arrived.
        n = await self.cases.count_resend(row.message_id)
        if not await self.publish(row, msg_id=f"{row.message_id}.r{n}"):
            return 0
        await self.ledger.append(row.entry(Event.RESENT, Detail(resend=n)))
        return 1

    async def _in_outbound(self, row: CaseRow) -> bool:
        if self._js is None:
            return True
        try:
            await self._js.get_last_msg(subjects.outbound_stream_name(self.region), row.out_subject)
            return True
        except nats.js.errors.NotFoundError:
            return False
        except Exception:
            return True  # cannot tell: do not re-send on a guess
