"""Limits at the gateway: how often a partner may call, and how much it may hold at once.

:class:`PartnerLimiter` is the rate: a token bucket per calling system. A partner may make
``rate`` calls a second on average and ``burst`` at once; beyond that it gets RESOURCE_EXHAUSTED
with a RetryInfo saying when a call will be allowed again. Buckets live in memory, one per system
id, the least recently used dropped past ``max_partners``.

:class:`CallCounter` is the concurrency: calls in flight per client connection, per partner system
across all its connections (unary calls and open streams counted apart), and on the whole gateway.
One partner holding a thousand WatchCase streams must not take every slot of the gateway from the
other partners and from the load balancer's health checks (which are never counted).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tongban.core.errors import RateLimited, Reason

# Retry hints of the refusals: an in-flight unary call ends within its deadline (usually far
# sooner); a stream ends only when its case does, so hammering for a stream slot gains nothing.
_RETRY_UNARY_S = 0.05
_RETRY_STREAM_S = 1.0
_RETRY_BUSY_S = 0.5


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


@dataclass(frozen=True)
class ConcurrencyLimits:
    """Bounds on calls in flight (each >= 1); see ``[gateway]`` in tongban/runtime/config.py."""

    per_connection: int
    """Calls (unary and streams) on one client connection."""
    unary_per_partner: int
    """Unary calls of one partner system across all its connections."""
    streams_per_partner: int
    """Open server streams (WatchCase) of one partner system across all its connections."""
    total: int
    """Calls on the whole gateway, every partner's and the unidentified ones (health Watch,
    reflection) together; health Check is never counted."""


class CallCounter:
    """Counts calls in flight and refuses one that would exceed a bound, before it runs.

    ``enter`` and ``leave`` pair up (the interceptor calls ``leave`` in a ``finally``); all on the
    server's event loop, so plain dicts need no lock. Keys are dropped at zero: a partner or a
    connection that is gone leaves nothing behind.
    """

    def __init__(self, limits: ConcurrencyLimits) -> None:
        self.limits = limits
        self.total = 0
        self._connections: dict[str, int] = {}
        self._unary: dict[str, int] = {}
        self._streams: dict[str, int] = {}

    def enter(self, connection: str, partner: str | None, *, stream: bool) -> None:
        """Count a call of ``partner`` (None: a call without partner identity) on ``connection``.

        Raises:
            RateLimited: ``TOO_MANY_IN_FLIGHT`` (this connection), ``PARTNER_TOO_MANY_STREAMS`` /
                ``PARTNER_TOO_MANY_IN_FLIGHT`` (this partner, all its connections) or
                ``GATEWAY_BUSY`` (the whole gateway); nothing is counted then.
        """
        lim = self.limits
        n = self._connections.get(connection, 0)
        if n >= lim.per_connection:
            raise RateLimited(
                f"{n} calls are already in flight on this connection (at most {lim.per_connection})",
                retry_after_s=_RETRY_UNARY_S,
                reason=Reason.TOO_MANY_IN_FLIGHT,
            )
        per_partner = self._streams if stream else self._unary
        if partner is not None:
            held = per_partner.get(partner, 0)
            if stream and held >= lim.streams_per_partner:
                raise RateLimited(
                    f"this partner system already has {held} streams open (at most "
                    f"{lim.streams_per_partner}, over all its connections)",
                    retry_after_s=_RETRY_STREAM_S,
                    reason=Reason.PARTNER_TOO_MANY_STREAMS,
                )
            if not stream and held >= lim.unary_per_partner:
                raise RateLimited(
                    f"this partner system already has {held} calls in flight (at most "
                    f"{lim.unary_per_partner}, over all its connections)",
                    retry_after_s=_RETRY_UNARY_S,
                    reason=Reason.PARTNER_TOO_MANY_IN_FLIGHT,
                )
        if self.total >= lim.total:
            raise RateLimited(
                f"the gateway has {self.total} calls in flight (at most {lim.total}): retry, or use "
                "another replica",
                retry_after_s=_RETRY_BUSY_S,
                reason=Reason.GATEWAY_BUSY,
            )
        self._connections[connection] = n + 1
        if partner is not None:
            per_partner[partner] = per_partner.get(partner, 0) + 1
        self.total += 1

    def leave(self, connection: str, partner: str | None, *, stream: bool) -> None:
        """The call ``enter`` counted has ended."""
        _down(self._connections, connection)
        if partner is not None:
            _down(self._streams if stream else self._unary, partner)
        self.total -= 1

    def held(self, partner: str) -> tuple[int, int]:
        """(unary calls, streams) ``partner`` has in flight now."""
        return self._unary.get(partner, 0), self._streams.get(partner, 0)


def _down(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 1) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
