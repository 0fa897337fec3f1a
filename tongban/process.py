"""Running one long-lived tongban process until SIGINT/SIGTERM, then stopping it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import sys
from collections.abc import Awaitable, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a service manager's stop, and a closed terminal all mean: stop gracefully."""


_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: between fork and exec (where ``die_with_parent`` runs) a dlopen
# could wait forever on, or trip over, a loader lock another thread of the parent held at the fork
# (seen as a child dying of SIGSEGV while gRPC threads were busy). Calling a resolved function is safe.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: the kernel sends SIGTERM to the child when the process
    that started it dies, however it dies (Linux; elsewhere a no-op). Children are started in their
    own session so a terminal's Ctrl-C reaches only the supervisor, which stops them in order; this
    is the safety net for when the supervisor is killed outright."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


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
