"""Bounded stops (tongban/runtime/shutdown.py): a lost cancel is repeated, a task that never ends is left
behind at its deadline, a step that overruns or fails does not stop the stop."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from structlog.testing import capture_logs

from tests.helpers import eventually
from tongban.runtime.shutdown import Deadline, finish_task, stop_task, within


async def _wait_for_loop(results: asyncio.Queue[asyncio.Future[None]], passes: list[int]) -> None:
    """A periodic loop like the gateway's health probe: each pass awaits a result through
    ``asyncio.wait_for``, and it counts on a cancel to end."""
    while True:
        fut = await results.get()
        await asyncio.wait_for(fut, 5.0)
        passes.append(1)


async def test_a_cancel_swallowed_by_wait_for_is_repeated() -> None:
    # The teardown hang of issue 12: on 3.11 a cancel that arrives in the same loop iteration as
    # wait_for's result is dropped, and a loop that counts on one cancel runs on.
    results: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    passes: list[int] = []
    task = asyncio.create_task(_wait_for_loop(results, passes))
    fut = asyncio.get_running_loop().create_future()
    await results.put(fut)
    await asyncio.sleep(0)  # the loop takes the future and parks in wait_for on it
    fut.set_result(None)  # the answer arrives...
    await asyncio.sleep(0)  # ... the inner future is done, wait_for has not resumed yet
    with capture_logs() as logs:
        assert await stop_task(task, timeout=2.0, what="probe loop")  # True: it ended within the bound
    assert task.cancelled()
    lost = [e for e in logs if e["event"] == "stop.cancelled_again"]
    if sys.version_info < (3, 12):
        # The first cancel was lost: the loop made one more pass, the second cancel ended it.
        assert passes == [1]
        assert lost and lost[0]["cancels"] == 2


async def test_a_task_that_ignores_cancellation_is_left_behind_at_the_deadline() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a bug: it swallows every cancel

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)  # one loop iteration: the task starts and parks in release.wait()
    with capture_logs() as logs:
        began = time.monotonic()
        async with asyncio.timeout(10):  # a stop_task that never gave up would fail here
            assert not await stop_task(task, timeout=0.5, what="stubborn")
    assert time.monotonic() - began >= 0.5  # it kept cancelling until its deadline, then gave up
    assert any(e["event"] == "stop.abandoned" and e["what"] == "stubborn" for e in logs)
    release.set()
    await task


async def test_finish_task_lets_a_loop_end_on_its_flag_before_cancelling() -> None:
    stopping = asyncio.Event()
    passes: list[int] = []

    async def loop() -> None:
        while not stopping.is_set():
            passes.append(1)
            await asyncio.sleep(0.01)  # the loop's own period (the loop is what is under test)

    task = asyncio.create_task(loop())
    await eventually(lambda: len(passes) >= 2, what="the loop running")
    stopping.set()
    assert await finish_task(task, timeout=2.0, what="flagged loop")
    assert task.done() and not task.cancelled()  # it ended by itself


async def test_within_bounds_a_step_and_swallows_its_failure() -> None:
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    async def fails() -> None:
        raise RuntimeError("broken")

    with capture_logs() as logs:
        async with asyncio.timeout(10):  # a within() that waited for the step would fail here
            assert not await within(hangs(), timeout=0.2, what="hanging step")
        assert not await within(fails(), timeout=1.0, what="failing step")
        assert await within(asyncio.sleep(0), timeout=1.0, what="quick step")
    events = {(e["event"], e["what"]) for e in logs}
    assert ("stop.step_timed_out", "hanging step") in events
    assert ("stop.step_failed", "failing step") in events


def test_a_deadline_shares_out_what_is_left() -> None:
    now = [100.0]
    deadline = Deadline(10.0, clock=lambda: now[0])
    assert deadline.budget(3.0) == 3.0
    assert deadline.less(2.0).remaining() == 8.0
    now[0] = 108.5
    assert deadline.budget(3.0) == 1.5
    now[0] = 120.0
    assert deadline.remaining() == 0.0
    assert deadline.budget(3.0) > 0  # a late step still gets to cancel what it holds


def test_no_asyncio_wait_for_in_the_packages() -> None:
    """``asyncio.wait_for`` loses a cancellation on Python 3.11 (gh-86296): a loop built on it can
    outlive its stop and, at interpreter exit, spin forever in the loop's last cancel-all. The
    packages use ``asyncio.timeout`` (which does not create a task and keeps the cancel)."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for package in ("gateway", "connectors", "ledger", "tongban")
        for path in sorted((root / package).rglob("*.py"))
        if "/v1/" not in path.as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "wait_for(" in line and not line.lstrip().startswith("#")
    ]
    assert offenders == []
