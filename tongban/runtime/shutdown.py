"""Bounded stops: every component's stop has a deadline, then cancels what is left, then returns.

A process stop (SIGTERM) gets one :class:`Deadline` (``[process] grace_s``); each component's
``stop`` takes its steps against it, each step capped by its own bound, so the process exits
within the grace whatever one part does.

Why one ``task.cancel()`` is not enough: on Python 3.11, ``asyncio.wait_for`` returns the inner
result and drops a cancellation that arrives in the loop iteration between that result and its own
wake-up (CPython gh-86296, fixed in 3.12). nats-py's ``flush`` and ``request`` use ``wait_for``, and
so did the gateway's ledger probe. A loop that counts on a single cancel to end then runs on, and a
stop that awaits it waits forever: that was the teardown hang of issue 12 (the gateway's health
loop swallowed its cancel; ``Gateway.stop`` never returned and Wuxi's checkpoint schedule kept
signing). Hence, here:

* long-lived loops end on their own stop flag; cancellation only interrupts their waits, so a lost
  cancel costs one more pass, not the process;
* :func:`stop_task` cancels again until the task ends, and gives up at its deadline (logged);
* :func:`within` runs one stop step under a deadline and never raises what the step raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, TypeVar

import structlog

log = structlog.get_logger("tongban.runtime.shutdown")
T = TypeVar("T")

MIN_STEP_S: Final = 0.05
"""A step that starts past the deadline still gets this long: enough to cancel its tasks."""
_RECANCEL_S: Final = 0.2
"""A task still running this long after a cancel is cancelled again (the first may have been lost)."""


class Deadline:
    """The moment by which a whole stop must be done; each step asks it for its share.

    Args:
        seconds: from now.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = clock() + max(0.0, seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self._clock())

    def less(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` earlier than this one (what comes after a step needs that long)."""
        earlier = Deadline(0.0, clock=self._clock)
        earlier.at = self.at - seconds
        return earlier

    def budget(self, cap: float) -> float:
        """The time one step may take: its own ``cap``, but not beyond the deadline (and at least
        :data:`MIN_STEP_S`, so a late step can still cancel what it holds)."""
        return max(MIN_STEP_S, min(cap, self.remaining()))


async def stop_task(task: asyncio.Task[Any] | None, *, timeout: float, what: str) -> bool:
    """Cancel ``task`` and wait for it to end, at most ``timeout`` seconds; True when it ended.

    Cancels again while it runs on (a cancel swallowed by ``wait_for`` in 3.11). A task still
    running at the deadline is left behind and logged (``stop.abandoned``): the stop goes on.
    Cancelling the caller cancels only the wait, as with :func:`asyncio.wait`.
    """
    if task is None:
        return True
    return await _end(task, timeout=timeout, what=what, cancel_first=True)


async def finish_task(task: asyncio.Task[Any] | None, *, timeout: float, what: str) -> bool:
    """Let ``task`` end by itself (its stop flag is set) for at most ``timeout`` seconds, then
    :func:`stop_task` it with a short bound; True when it ended."""
    if task is None:
        return True
    return await _end(task, timeout=timeout, what=what, cancel_first=False)


async def finish_tasks(tasks: Iterable[asyncio.Task[Any]], *, timeout: float, what: str) -> int:
    """:func:`finish_task` for several tasks sharing one bound; returns how many had to be cancelled."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return 0
    _, late = await asyncio.wait(pending, timeout=timeout)
    if late:
        results = await asyncio.gather(
            *(stop_task(t, timeout=max(MIN_STEP_S, min(timeout, 1.0)), what=what) for t in late)
        )
        log.warning("stop.cancelled_in_flight", what=what, count=len(late), abandoned=results.count(False))
    return len(late)


async def _end(task: asyncio.Task[Any], *, timeout: float, what: str, cancel_first: bool) -> bool:
    loop = asyncio.get_running_loop()
    until = loop.time() + max(MIN_STEP_S, timeout)
    if not cancel_first:
        await asyncio.wait({task}, timeout=max(MIN_STEP_S, timeout))
        # It had its chance; the cancel below gets a short bound of its own.
        until = loop.time() + max(MIN_STEP_S, min(timeout, 1.0))
    cancels = 0
    while not task.done():
        task.cancel()
        cancels += 1
        left = until - loop.time()
        if left <= 0:
            break
        await asyncio.wait({task}, timeout=min(left, _RECANCEL_S))
    if cancels > 1:
        # Either a lost cancel (3.11 wait_for) or a slow cleanup: worth seeing when it happens.
        log.info("stop.cancelled_again", what=what, cancels=cancels)
    if not task.done():
        log.error("stop.abandoned", what=what, task=task.get_name())
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("stop.task_failed", what=what, error=type(exc).__name__)
    return True


async def within(step: Coroutine[Any, Any, T], *, timeout: float, what: str) -> bool:
    """Run one stop step for at most ``timeout`` seconds; True when it completed without error.

    A step that overruns is cancelled (bounded by :func:`stop_task`); one that raises is logged.
    Either way the stop goes on to its next step, so nothing here raises but the caller's own
    cancellation.
    """
    task = asyncio.create_task(step, name=f"stop {what}")
    try:
        done, _ = await asyncio.wait({task}, timeout=max(MIN_STEP_S, timeout))
    except asyncio.CancelledError:
        task.cancel()  # the stop itself was cancelled: its step goes with it
        raise
    if not done:
        log.warning("stop.step_timed_out", what=what, timeout_s=round(timeout, 3))
        await stop_task(task, timeout=max(MIN_STEP_S, min(timeout, 1.0)), what=what)
        return False
    if task.cancelled():
        return False
    if (exc := task.exception()) is not None:
        log.warning("stop.step_failed", what=what, error=type(exc).__name__, detail=str(exc)[:200])
        return False
    return True


async def in_daemon_thread(fn: Callable[[], object], *, timeout: float, what: str) -> bool:
    """Run a blocking stop step (an exporter's flush) on a daemon thread for at most ``timeout``
    seconds; True when it returned. Not the default executor: the interpreter's exit waits for
    that one's threads, and a step that hangs must not hold the process."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            log.warning("stop.step_failed", what=what, error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be closed by then
                loop.call_soon_threadsafe(_settle, finished)

    threading.Thread(target=run, name=f"stop {what}", daemon=True).start()
    done, _ = await asyncio.wait({finished}, timeout=max(MIN_STEP_S, timeout))
    if not done:
        log.warning("stop.step_timed_out", what=what, timeout_s=round(timeout, 3))
    return bool(done)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
