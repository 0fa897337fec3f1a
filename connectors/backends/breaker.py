"""A circuit breaker per back end: stop calling a back end that keeps failing, try again later.

Closed, it counts consecutive failures; at ``failures`` in a row it opens. Open, it refuses every
call until ``cooldown_s`` have passed, then lets exactly one trial call through (half-open): a
success closes it, a failure opens it for another cool-down, and while the trial runs every other
call is refused. A call that ends without an answer either way (cancelled by its caller) gives the
trial back, so the next call may try.

Only signs of a back end that is down or overloaded count as failures (connection errors,
timeouts, HTTP 5xx and 429); a back end that answers, even "no record" or "refused", is healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker", "Permit"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Permit(StrEnum):
    """Why a call may go: the breaker is closed, or this is the one trial of a half-open breaker."""

    CALL = "call"
    TRIAL = "trial"


class CircuitBreaker:
    """One back end's breaker (not thread-safe: one event loop uses it).

    Args:
        failures: consecutive failures that open it; 0 never opens.
        cooldown_s: how long it stays open before one trial call.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self, *, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failed = 0
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker past its cool-down reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return self._state

    def acquire(self) -> Permit | None:
        """A permit to call the back end now, or None (the breaker is open). A permit must be
        handed back with exactly one of :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit.CALL
        if state is BreakerState.HALF_OPEN and not self._trial_out:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = True
            return Permit.TRIAL
        return None

    def succeeded(self, permit: Permit) -> None:
        """The back end answered: close, and forget earlier failures."""
        self._state = BreakerState.CLOSED
        self._failed = 0
        if permit is Permit.TRIAL:
            self._trial_out = False

    def failed(self, permit: Permit) -> None:
        """The back end failed: count it; open at the threshold, or again after a failed trial."""
        self._failed += 1
        if permit is Permit.TRIAL or (
            self._state is BreakerState.CLOSED and self.failures and self._failed >= self.failures
        ):
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
        if permit is Permit.TRIAL:
            self._trial_out = False

    def abandoned(self, permit: Permit) -> None:
        """The call ended without telling either way (cancelled): give the trial back, if it was one."""
        if permit is Permit.TRIAL:
            self._trial_out = False
