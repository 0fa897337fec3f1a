"""Which peer regions this gateway reaches through the hub: an end-to-end ping of each.

The region's own NATS being up says nothing of the hub: with the hub (or this region's link to it)
down, Submit still works (store and forward: the case waits in the region's own stream) but every
Query gets NO_RESPONDERS. The truest test of "a Query to region R would be answered" is the path a
Query takes: a request through this region's leaf, the hub and R's leaf to R's connectors, which
answer ``subjects.ping_subject(R)``. A leafnode monitoring endpoint (``/leafz``) would say only that
a link is up, not that anything behind it answers, and would need every region server's monitoring
port. A ping crossing no hub costs one small request per peer and probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import nats.errors
from nats.aio.client import Client as NATS

from tongban.core import subjects
from tongban.core.registry import Registry


class PeerReach:
    """The registered peer regions and whether each answered the last probe.

    Args:
        region: this gateway's region (never probed).
        nc: the gateway's NATS connection (its inbox prefix names the region: connectors answer
            only registered regions' inboxes).
        registry: the live registry (adopted in place when it changes): its regions are the peers.
        timeout_s: how long one ping may take before its peer counts as unreachable.
    """

    def __init__(self, region: str, nc: NATS, registry: Registry, *, timeout_s: float) -> None:
        self.region = region
        self.nc = nc
        self.registry = registry
        self.timeout_s = timeout_s
        self.reachable: Mapping[str, bool] = {}
        """Peer region → answered at the last probe (replaced whole, so a reader never sees a
        probe half-applied)."""

    @property
    def any(self) -> bool:
        """Whether some peer region answers: the hub link carries requests."""
        return any(self.reachable.values())

    async def probe(self) -> bool:
        """Ping every peer region at once; True if any peer's reachability changed."""
        peers = sorted(r for r in self.registry.regions if r != self.region)
        answered = await asyncio.gather(*(self._ping(p) for p in peers))
        now = dict(zip(peers, answered, strict=True))
        changed = now != self.reachable
        self.reachable = now
        return changed

    async def _ping(self, peer: str) -> bool:
        try:
            await self.nc.request(subjects.ping_subject(peer), b"", timeout=self.timeout_s)
        except (nats.errors.Error, TimeoutError):
            # No responders (no interest crossed the hub), a timeout, a connection being re-made.
            return False
        return True
