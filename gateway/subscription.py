"""A core-NATS subscription drained by a task of our own, so a stop ends it within a bound.

The checkpoint publisher's ledger responder and the witness each take their messages this way: a
handler that fails is logged and the next message taken; a stop cancels the message in hand (a
request is asked again, a checkpoint comes again) and unsubscribes, bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tongban.runtime.shutdown import stop_task, within

log = structlog.get_logger("gateway.subscription")

PENDING_MSGS: Final = 1024
"""Messages a subscription holds before nats-py drops new ones (slow consumer)."""
STOP_S: Final = 2.0
"""Default bound of a stop of a subscription, or of a part that owns one."""


class DrainedSubscription:
    """One subscription (a queue group's member) whose messages ``handle`` takes one at a time.

    Args:
        name: the drain task's name, also in its log events.
        handle: called with each message; what it raises is logged, and the drain goes on.
    """

    def __init__(self, name: str, handle: Callable[[Msg], Awaitable[None]]) -> None:
        self._name = name
        self._handle = handle
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, nc: NATS, subject: str, queue: str) -> None:
        self._stopping = False
        self._sub = await nc.subscribe(subject, queue=queue, pending_msgs_limit=PENDING_MSGS)
        self._task = asyncio.create_task(self._drain(self._sub), name=self._name)

    async def stop(self, timeout: float = STOP_S) -> None:
        """Cancel the drain (the message in hand is dropped: a proof request is asked again, a
        checkpoint comes again) and unsubscribe, within ``timeout``."""
        task, self._task = self._task, None
        sub, self._sub = self._sub, None
        self._stopping = True
        await stop_task(task, timeout=timeout, what=self._name)
        if sub is not None:
            await within(sub.unsubscribe(), timeout=min(timeout, 1.0), what=f"{self._name} unsubscribe")

    async def _drain(self, sub: Subscription) -> None:
        async for msg in sub.messages:
            # A handler's NATS request can swallow a cancel (3.11 wait_for): the flag ends the loop.
            if self._stopping:
                return
            try:
                await self._handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "witness.handler_failed", task=self._name, error=type(exc).__name__, detail=str(exc)[:200]
                )
