"""Test utilities: waiting on conditions (never on sleeps), free ports for fixed-port servers."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


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


_TAKEN: set[int] = set()


def free_port() -> int:
    """A free loopback port below the ephemeral range, for a server that must keep its port across a
    restart: a port the kernel hands out for port 0 or for an outgoing connection (other tests'
    clients) could be taken again before the server binds."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
