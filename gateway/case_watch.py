"""Wake-ups of the WatchCase streams: in this process, and across the region's gateways.

A case changes wherever its event is handled or its delivery moves on: on any of the region's
gateway replicas. The one that changed it wakes its own watchers and publishes the case number on
``tb.v1.casechg.<region>`` (core NATS, no personal data) so the others wake theirs; a nudge lost
in a reconnect costs a watcher at most its poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tongban.core import subjects
from tongban.runtime.shutdown import Deadline, within


class CaseWatchers:
    """The wake-up events of the WatchCase streams this process serves, per case.

    Args:
        region: this gateway's region.
        nc: the gateway's NATS connection (nudges to and from the region's other gateways).
    """

    def __init__(self, region: str, nc: NATS) -> None:
        self.region = region
        self.nc = nc
        self.by_case: dict[str, set[asyncio.Event]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Take the region's nudges; idempotent."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(subjects.case_notify_subject(self.region), cb=self._nudged)

    async def stop(self, deadline: Deadline) -> None:
        """Stop taking nudges (within ``deadline``'s share); idempotent."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await within(sub.unsubscribe(), timeout=deadline.budget(1.0), what="case notifications")

    def register(self, case_no: str) -> asyncio.Event:
        ev = asyncio.Event()
        self.by_case.setdefault(case_no, set()).add(ev)
        return ev

    def unregister(self, case_no: str, ev: asyncio.Event) -> None:
        group = self.by_case.get(case_no)
        if group is not None:
            group.discard(ev)
            if not group:
                del self.by_case[case_no]

    def wake(self, case_no: str) -> None:
        for ev in self.by_case.get(case_no, ()):
            ev.set()

    def wake_all(self) -> None:
        """Wake every watcher (a stop: each sees it and ends its stream)."""
        for group in self.by_case.values():
            for ev in group:
                ev.set()

    async def changed(self, case_no: str) -> None:
        """``case_no`` changed here: wake its watchers in this process and in the region's other
        gateways (best effort: a watcher also looks again on its own after a while)."""
        self.wake(case_no)
        with contextlib.suppress(Exception):
            await self.nc.publish(subjects.case_notify_subject(self.region), case_no.encode())

    async def _nudged(self, msg: Msg) -> None:
        self.wake(msg.data.decode(errors="replace"))
