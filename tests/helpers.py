"""Test utilities: waiting on conditions (never on sleeps); free ports for fixed-port servers come
from :func:`tongban.dev.free_port`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tongban.dev import free_port

__all__ = ["eventually", "free_port"]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or check}")
        await asyncio.sleep(0.01)  # the polling interval of the condition wait itself
