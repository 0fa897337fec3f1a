"""Durable (Submit) delivery: per-service retry policy and the case-status vocabulary.

The catalogue item's ``delivery`` block sets back-off, attempts and time to live per service;
what it leaves unset comes from the node's config.
"""

from __future__ import annotations

from dataclasses import dataclass

from tongban.v1 import catalogue_pb2, exchange_pb2

_S = exchange_pb2

TERMINAL_STATUSES = frozenset(
    {
        _S.CASE_STATUS_WITHDRAWN,
        _S.CASE_STATUS_NOT_ACCEPTED,
        _S.CASE_STATUS_REFUSED_ACCEPTANCE,
        _S.CASE_STATUS_APPROVED,
        _S.CASE_STATUS_APPROVED_MATERIALS_DEFERRED,
        _S.CASE_STATUS_REFUSED,
        _S.CASE_STATUS_RECALLED,
        _S.CASE_STATUS_REVOKED,
    }
)
"""Case statuses after which a case does not change (BLZT 2, 4, 5, 11–15; docs/domain.md "Case status")."""

FAILED_DELIVERY = frozenset(
    {
        exchange_pb2.DELIVERY_STATE_EXPIRED,
        exchange_pb2.DELIVERY_STATE_DEAD_LETTERED,
        exchange_pb2.DELIVERY_STATE_REJECTED,
    }
)

_RANK = {
    exchange_pb2.DELIVERY_STATE_UNSPECIFIED: 0,
    exchange_pb2.DELIVERY_STATE_ACCEPTED: 1,
    exchange_pb2.DELIVERY_STATE_FORWARDED: 2,
    exchange_pb2.DELIVERY_STATE_PROCESSED: 3,
    exchange_pb2.DELIVERY_STATE_EXPIRED: 4,
    exchange_pb2.DELIVERY_STATE_DEAD_LETTERED: 4,
    exchange_pb2.DELIVERY_STATE_REJECTED: 4,
}


def delivery_rank(state: int) -> int:
    """Order of delivery states: a later report of an earlier state never overrides a later one."""
    return _RANK.get(state, 0)  # type: ignore[call-overload]


def is_terminal(status: int, delivery: int) -> bool:
    return status in TERMINAL_STATUSES or delivery in FAILED_DELIVERY


@dataclass(frozen=True)
class RetryPolicy:
    """How one service's durable requests are retried at the handling region.

    Attributes:
        backoff_s: delay before the 2nd, 3rd, ... attempt; the last value repeats.
        max_attempts: attempts before the request is dead-lettered.
        ttl_s: default time to live of a Submit for this service.
    """

    backoff_s: tuple[float, ...]
    max_attempts: int
    ttl_s: float

    def delay_after(self, attempt: int) -> float:
        """Delay before the attempt after ``attempt`` (1-based)."""
        if not self.backoff_s:
            return 1.0
        return self.backoff_s[min(max(attempt, 1), len(self.backoff_s)) - 1]


def policy_for(
    item: catalogue_pb2.CatalogueItem | None,
    *,
    default_backoff_s: tuple[float, ...],
    default_max_attempts: int,
    default_ttl_s: float,
) -> RetryPolicy:
    """The item's policy, with the node's defaults for what it leaves unset."""
    backoff = default_backoff_s
    attempts = default_max_attempts
    ttl = default_ttl_s
    if item is not None and item.HasField("delivery"):
        d = item.delivery
        if d.backoff:
            backoff = tuple(b.ToTimedelta().total_seconds() for b in d.backoff)
        if d.max_attempts:
            attempts = d.max_attempts
        if d.HasField("time_to_live") and d.time_to_live.ToTimedelta().total_seconds() > 0:
            ttl = d.time_to_live.ToTimedelta().total_seconds()
    return RetryPolicy(backoff, attempts, ttl)
