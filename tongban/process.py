"""Running one long-lived tongban process until SIGINT/SIGTERM, then stopping it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a service manager's stop, and a closed terminal all mean: stop gracefully."""


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


async def wait_for_signal() -> int:
    """Block until SIGINT, SIGTERM or SIGHUP; returns the signal number."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[int] = loop.create_future()

    def fire(signum: int) -> None:
        if not fired.done():
            fired.set_result(signum)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, fire, sig)
    try:
        return await fired
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def serve_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """start(); wait for a signal; stop() (stop runs even if start failed half-way)."""
    try:
        await start()
        await wait_for_signal()
    finally:
        await stop()
