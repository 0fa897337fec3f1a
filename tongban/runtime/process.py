"""Running one long-lived tongban process until SIGINT/SIGTERM, then stopping it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Final

import structlog

from tongban.runtime.shutdown import Deadline, stop_task

log = structlog.get_logger("tongban.runtime.process")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a service manager's stop, and a closed terminal all mean: stop gracefully."""
EXIT_MARGIN_S: Final = 1.0
"""After the grace, this long for the interpreter's own exit before the watchdog ends the process."""
EXIT_OVERRAN: Final = 70
"""Exit status of a process whose stop overran its grace (EX_SOFTWARE): not a clean stop."""


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the kernel sends the child SIGTERM when the process that started it dies,
    however it dies (``setpriv --pdeathsig``, util-linux; where it is missing, ``argv`` unchanged).

    Children are started in their own session so a terminal's Ctrl-C reaches only the supervisor,
    which stops them in order; this is the safety net for when the supervisor is killed outright.
    The death signal is set after exec, in the child, not by a ``preexec_fn``: Python code run
    between fork and exec in a process with gRPC threads crashed children with SIGSEGV here.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Future[int]]:
    """While in the block, SIGINT, SIGTERM and SIGHUP resolve the future (with the first signal's
    number) instead of ending the process."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[int] = loop.create_future()

    def fire(signum: int) -> None:
        if not fired.done():
            fired.set_result(signum)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, fire, sig)
    try:
        yield fired
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def wait_for_signal() -> int:
    """Block until SIGINT, SIGTERM or SIGHUP; returns the signal number."""
    with stop_signals() as fired:
        return await fired


async def serve_until_signal(
    start: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[Deadline], Awaitable[None]],
    *,
    grace_s: float,
) -> None:
    """start(); wait for a signal; stop(deadline), the deadline ``grace_s`` after the signal.

    Signals are handled from the first moment: one during a start that hangs (NATS unreachable)
    cancels it, and stop runs whenever start did not finish. A stop that overruns its grace by
    :data:`EXIT_MARGIN_S` ends the process anyway (:func:`exit_after`): a pod that never
    terminates is worse than one whose last steps were cut short.
    """
    with stop_signals() as signalled:
        starting = asyncio.create_task(start(), name="start")
        try:
            first: set[asyncio.Future[Any]] = {starting, signalled}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a failed start raises here, after its stop below
                await signalled
            else:
                log.info("process.stop_during_start", signal=signal.Signals(signalled.result()).name)
        finally:
            # Signals stay caught until the stop is over: a second Ctrl-C does not cut it short.
            deadline = Deadline(grace_s)
            exit_after(grace_s + EXIT_MARGIN_S)
            began = time.monotonic()
            # A start cut short releases what it took (its own bounded stop).
            await stop_task(starting, timeout=deadline.budget(2.0), what="start")
            await stop(deadline)
            log.info("process.stopped", stop_s=round(time.monotonic() - began, 3), grace_s=grace_s)


def exit_after(seconds: float) -> threading.Thread:
    """A watchdog: unless the process has exited by then, end it in ``seconds`` with
    :data:`EXIT_OVERRAN` (a daemon thread, so it never holds up a normal exit). Beyond the event
    loop's reach: a thread stuck in a disk write, interpreter shutdown joining executor threads."""

    def watch() -> None:
        time.sleep(seconds)  # nothing to wait on: the process's exit is what ends this thread
        log.error("process.stop_overran", after_s=seconds)
        logging.shutdown()
        os._exit(EXIT_OVERRAN)

    thread = threading.Thread(target=watch, name="stop-watchdog", daemon=True)
    thread.start()
    return thread
