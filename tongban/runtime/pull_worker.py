"""A durable pull consumer worked by a task of its own: fetch, hand each batch over, stop.

Every loop that drains one of a region's JetStream durables (bound with
:func:`~tongban.runtime.streams.durable_pull`) takes the same steps: fetch with a short wait so the
stop flag is seen within it, ride out a connection that is down, hand each batch to its owner,
unsubscribe at the end, and stop within a bound (:func:`~tongban.runtime.shutdown.finish_task`).
:class:`PullWorker` is those steps; what to do with the messages (and when to ack them) stays with
its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from tongban.runtime.shutdown import finish_task

log = structlog.get_logger("tongban.runtime.pull_worker")

FETCH_WAIT_S: Final = 0.25
"""How long one fetch waits for messages: also how long a stop waits for the loop to see its flag."""
_PAUSE_S: Final = 0.2
"""After a fetch that failed (the connection is down, the server restarts), before the next one."""


class PullWorker:
    """Fetches from one durable pull consumer on a task of its own until stopped.

    ``start()``/``stop()`` are idempotent; a stopped worker can be started again.

    Args:
        handle: called with each batch fetched (never empty). It acks, naks or terms the messages;
            a message it leaves alone is redelivered after the consumer's ack wait. It should not
            raise: what it raises ends the worker.
        batch: the most messages one fetch asks for.
        room: if given, called before each fetch instead of fetching ``batch``: waits until the
            owner can take messages and returns how many (the owner's own window, e.g. messages in
            hand that are still being worked on).
        events: prefix of this worker's log events (``<events>.fetch_failed``).
        on_end: if given, called when the loop ends without being asked to (``handle`` or ``room``
            raised, or the task was cancelled from outside), with what ended it (None: a cancel),
            so the owner can report a consumer that no longer runs.
    """

    def __init__(
        self,
        handle: Callable[[list[Msg]], Awaitable[None]],
        *,
        batch: int,
        room: Callable[[], Awaitable[int]] | None = None,
        events: str,
        on_end: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self._handle = handle
        self.batch = batch
        self._room = room
        self._events = events
        self._on_end = on_end
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._task is not None

    def start(self, sub: JetStreamContext.PullSubscription, *, task_name: str) -> None:
        """Start fetching from ``sub`` (bound by :func:`~tongban.runtime.streams.durable_pull`),
        on a task named ``task_name``. Does nothing while running."""
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._loop(sub), name=task_name)
        self._task.add_done_callback(self._ended)

    def begin_stop(self) -> None:
        """Set the stop flag without waiting: the loop ends after the batch in hand (or the fetch
        wait in progress). :meth:`stop` then waits for it, bounded."""
        if self._task is not None:
            self._stopping = True

    async def stop(self, *, timeout: float, what: str) -> bool:
        """Set the stop flag and let the batch in hand finish, at most ``timeout`` seconds; then
        cancel (bounded). True when the loop ended; ``what`` names it in the stop's log events."""
        task, self._task = self._task, None
        if task is None:
            return True
        self._stopping = True
        return await finish_task(task, timeout=timeout, what=what)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # stop() sets the flag before the loop can end and resumes only after this callback has
        # run (callbacks run in the order they were added): a stop is never reported as an end,
        # even when the worker is started again at once.
        if self._stopping or self._on_end is None:
            return
        self._on_end(None if task.cancelled() else task.exception())

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            while not self._stopping:
                size = self.batch if self._room is None else await self._room()
                if self._stopping:
                    break
                try:
                    msgs = await sub.fetch(size, timeout=FETCH_WAIT_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                    # The connection's own callbacks report it; nothing to add on every fetch.
                    await asyncio.sleep(_PAUSE_S)
                    continue
                except Exception as exc:  # a fetch refused while the server restarts
                    log.warning(f"{self._events}.fetch_failed", error=type(exc).__name__)
                    await asyncio.sleep(_PAUSE_S)
                    continue
                await self._handle(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
