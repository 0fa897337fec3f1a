"""Running one long-lived tongban process until SIGINT/SIGTERM, then stopping it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable


async def wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[int] = loop.create_future()

    def fire(signum: int) -> None:
        if not fired.done():
            fired.set_result(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, fire, sig)
    try:
        return await fired
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
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
