"""``CaseBackend``: the region's own case system takes delivered cases and reports their later
statuses.

* ``WatchDeliveries`` streams the pending deliveries, oldest first, then each new one as it is
  stored (woken by the queue, not by polling). Each streamed delivery is leased to the stream for
  ``lease_seconds`` (default ``[backend_api] lease_s``); one not acknowledged by then is streamed
  again, to this stream or another, with the next ``attempt`` number. Two streams never hold the
  same delivery at once. When a stream ends, what it held and had not had acknowledged is free at
  once.
* ``AckDelivery`` marks a delivery taken (its local code and system kept); twice is harmless.
* ``ReportStatus`` checks the status update (:mod:`.checks`) and hands it to the connector's case
  worker, which signs it and sends it to the submitting region like the first statuses.

Handlers raise tongban errors; the interceptor (:mod:`.interceptor`) turns them into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Final, Protocol

import grpc
import structlog

from connectors.adapters import StatusUpdate
from connectors.backend_api import checks
from connectors.backend_api.queue import RECHECK_S, DeliveryQueue, Via
from connectors.backend_api.sealed import DeliveryVault
from connectors.state import OutEvent
from tongban.core.catalogue import Catalogue
from tongban.core.errors import DeadlineExceeded, NotFound, Reason, TongbanError
from tongban.runtime.shutdown import Deadline, finish_tasks
from tongban.v1 import backend_pb2, backend_pb2_grpc

log = structlog.get_logger("tongban.connector.backend_api")


class Reporter(Protocol):
    """Sends later statuses of a case this region took: the case worker's ``report_status``."""

    def __call__(
        self, case_no: str, updates: Sequence[StatusUpdate], *, report_id: str = ""
    ) -> Coroutine[Any, Any, Sequence[OutEvent]]: ...


_MIN_REMAINING_S: Final = 0.05
"""A ReportStatus with less of its deadline left than this is refused before anything is sent."""


class CaseBackendService(backend_pb2_grpc.CaseBackendServicer):
    """The CaseBackend servicer of one connector.

    Args:
        queue: the deliveries (open while serving).
        vault: opens their sealed bodies.
        report: sends a case's later statuses (:data:`Reporter`).
        catalogue: the items watchers may filter on.
        lease_s: a streamed delivery's lease when the watcher asks for none.
    """

    def __init__(
        self,
        queue: DeliveryQueue,
        vault: DeliveryVault,
        report: Reporter,
        catalogue: Catalogue,
        *,
        lease_s: float,
    ) -> None:
        self.queue = queue
        self.vault = vault
        self.report = report
        self.catalogue = catalogue
        self.lease_s = lease_s
        self.stopping = False
        self._reports: set[asyncio.Task[Sequence[OutEvent]]] = set()

    def begin_stop(self) -> None:
        """End every stream (they return; their leases are freed); the calls in flight finish."""
        self.stopping = True
        self.queue.ring()

    async def finish(self, deadline: Deadline) -> None:
        """Wait, within ``deadline``, for the status reports in flight (a caller that went away
        does not cut a report short)."""
        await finish_tasks(self._reports, timeout=deadline.budget(3.0), what="status reports in flight")

    async def WatchDeliveries(
        self, request: backend_pb2.WatchDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[backend_pb2.WatchDeliveriesResponse]:
        services = checks.watch_filter(request, self.catalogue)
        lease_s = float(request.lease_seconds) if request.lease_seconds else self.lease_s
        owner = f"stream:{uuid.uuid4().hex}"
        # At once, before any delivery: the watcher knows it is watching (wait_for_connection).
        await context.send_initial_metadata(())
        log.info("backend_api.watching", services=len(services), lease_s=lease_s)
        try:
            while not self.stopping:
                changed = self.queue.waiter()
                now = time.time()
                taken = await self.queue.take(owner, now_s=now, lease_s=lease_s, services=services)
                if taken is None:
                    due = await self.queue.next_due(now_s=now, services=services)
                    wait = RECHECK_S if due is None else min(RECHECK_S, max(due - time.time(), 0.0))
                    if not self.stopping:
                        await _wait(changed, wait)
                    continue
                try:
                    delivery = self.vault.open(taken)
                except TongbanError as exc:
                    # A body this region cannot open again will never open: out of the way, on record.
                    await self.queue.kill(taken.delivery_id, now_s=time.time())
                    log.error("backend_api.delivery_unreadable", case_no=taken.case_no, reason=exc.reason)
                    continue
                log.info("backend_api.streamed", case_no=taken.case_no, attempt=taken.attempts)
                yield backend_pb2.WatchDeliveriesResponse(delivery=delivery)
        finally:
            # Shielded in the store: runs to its end even when the stream was cancelled. A store
            # closed meanwhile (the API stopping) frees nothing: the leases run out on their own.
            with contextlib.suppress(RuntimeError, sqlite3.Error):
                await self.queue.release(owner)

    async def AckDelivery(
        self, request: backend_pb2.AckDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> backend_pb2.AckDeliveryResponse:
        checks.ack(request)
        try:
            first = await self.queue.ack(
                request.delivery_id,
                now_s=time.time(),
                via=Via.STREAM,
                local_code=request.local_code,
                local_system=request.local_system,
            )
        except KeyError as exc:
            raise NotFound("no delivery has this id", reason=Reason.DELIVERY_NOT_FOUND) from exc
        log.info("backend_api.acked", first=first)
        return backend_pb2.AckDeliveryResponse(first=first)

    async def ReportStatus(
        self, request: backend_pb2.ReportStatusRequest, context: grpc.aio.ServicerContext
    ) -> backend_pb2.ReportStatusResponse:
        update = checks.status_update(request)
        remaining = context.time_remaining()
        if remaining is not None and remaining < _MIN_REMAINING_S:
            raise DeadlineExceeded("too little of the call's deadline is left to send a status")
        # Once begun, a report is signed, recorded and sent to its end: a caller that goes away
        # meanwhile (its deadline, a cancel) does not leave it half done.
        task = asyncio.create_task(self.report(request.case_no, [update], report_id=request.report_id))
        self._reports.add(task)
        task.add_done_callback(self._settled)
        events = await asyncio.shield(task)
        last = events[-1]
        log.info(
            "backend_api.status_reported", case_no=request.case_no, status=update.status, seq=last.last_seq
        )
        return backend_pb2.ReportStatusResponse(sequence=last.last_seq, event_id=last.event_id)

    def _settled(self, task: asyncio.Task[Sequence[OutEvent]]) -> None:
        self._reports.discard(task)
        if (
            not task.cancelled()
            and task.exception() is not None
            and not isinstance(task.exception(), TongbanError)
        ):
            # The caller may have gone: the failure is on record here at least (type only: the
            # exception's text may quote the request).
            log.error("backend_api.report_failed", error=type(task.exception()).__name__)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
