"""Per-partner rate limits at the gateway: a token bucket per calling system.

A partner may make ``rate`` calls a second on average and ``burst`` at once; beyond that it gets
RESOURCE_EXHAUSTED with a RetryInfo saying when a call will be allowed again. Buckets live in
memory, one per system id, the least recently used dropped past ``max_partners``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class PartnerLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_partners: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = max(burst, 1.0)
        self.max_partners = max_partners
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, partner: str) -> float:
        """Take one token; returns 0 when the call may go ahead, else seconds until it may."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens, stamp = self._buckets.pop(partner, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[partner] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[partner] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_partners:
            self._buckets.popitem(last=False)
        return wait
