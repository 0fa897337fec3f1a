"""The connections of one HTTP back end: at most ``size`` calls in flight, spread over a few small
httpx clients.

Why several clients: httpcore's connection pool looks at every one of its connections for every
request it places (and asks each idle one's socket whether it is still readable), so a request costs
CPU in proportion to the pool's size; at 64 connections that is more than the rest of the call.
Clients of at most :data:`SHARD_CONNECTIONS` connections keep that cost flat. A call takes one of
``size`` slots (waiting within its deadline when all are taken) and then the client with the fewest
calls in flight, which always has a free connection: the slots are never more than the clients'
connections together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx

__all__ = ["SHARD_CONNECTIONS", "ConnectionPool"]

SHARD_CONNECTIONS: Final = 8
"""The most connections one client holds."""


class ConnectionPool:
    """``size`` slots over ``ceil(size / SHARD_CONNECTIONS)`` clients made by ``make_client(n)``
    (a client of at most ``n`` connections)."""

    def __init__(self, size: int, make_client: Callable[[int], httpx.AsyncClient]) -> None:
        shards = -(-size // SHARD_CONNECTIONS)
        per_shard = -(-size // shards)
        self.clients = [make_client(per_shard) for _ in range(shards)]
        self._in_flight = [0] * shards
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client to make one call with, once a slot is free (the caller bounds the wait)."""
        async with self._slots:
            at = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
            self._in_flight[at] += 1
            try:
                yield self.clients[at]
            finally:
                self._in_flight[at] -= 1

    async def aclose(self) -> None:
        """Close every client (the caller bounds the wait)."""
        for client in self.clients:
            await client.aclose()
