"""What the SQL adapter needs of a database, whichever kind: run one read-only statement, bounded.

:class:`SqlEngine` is the plug-in point (:mod:`connectors.backends.sql_postgres`,
:mod:`connectors.backends.sql_sqlite`); :class:`Rows` is what it gives back. The helpers here make the
two kinds fail alike: a statement that ran out of time is a ``BACKEND_TIMEOUT``, anything else a
``BACKEND_FAILURE`` with a fixed text (a database's own message may quote the values bound).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from connectors.adapters import AdapterFailure
from tongban.core.errors import Reason

__all__ = ["CLOSE_TIMEOUT_S", "Budget", "Rows", "SqlEngine", "budget", "failure", "timed_out"]

CLOSE_TIMEOUT_S: Final = 5.0
"""How long closing a back end may wait for its statements in flight before it drops them."""


@dataclass(frozen=True)
class Rows:
    """The result of one statement: its column names and at most ``limit`` rows."""

    columns: tuple[str, ...]
    values: Sequence[Sequence[Any]]


class SqlEngine(Protocol):
    """One database (a connection pool, or a set of worker threads with a connection each)."""

    async def fetch(
        self, sql: str, values: Sequence[str], *, limit: int, deadline: float, service: str
    ) -> Rows:
        """Run ``sql`` read-only with ``values`` bound to ``$1 … $n``; at most ``limit`` rows.

        Args:
            sql: the statement (checked at start-up).
            values: the request's values for the placeholders, in order.
            limit: the most rows to read (the caller asks one more than it accepts, to notice more).
            deadline: the request's deadline (epoch seconds; 0: none).
            service: the catalogue item code (for the log).

        Raises:
            AdapterFailure: ``BACKEND_TIMEOUT`` when the statement or the deadline ran out,
                ``BACKEND_FAILURE`` when the database failed, refused the statement or cannot be reached.
        """
        ...

    async def aclose(self) -> None:
        """Stop: later calls fail; statements in flight get :data:`CLOSE_TIMEOUT_S`. Idempotent."""
        ...


@dataclass(frozen=True)
class Budget:
    """The time one call may take."""

    statement_s: float
    """The statement's own timeout: the configured one, or less when the deadline is nearer."""
    call_s: float
    """The bound of the whole call on this side (waiting for a connection, the statement, the rows)."""


def budget(deadline: float, *, statement_timeout_s: float, otherwise_s: float) -> Budget:
    """The budget of a call with ``deadline`` (epoch seconds; 0: none, and the call may take
    ``otherwise_s``).

    Raises:
        AdapterFailure: ``BACKEND_TIMEOUT``, the deadline has passed already.
    """
    remaining = deadline - time.time() if deadline else math.inf
    if remaining <= 0:
        raise timed_out("the request's deadline passed before the statement could start")
    return Budget(min(statement_timeout_s, remaining), min(remaining, otherwise_s))


def timed_out(message: str) -> AdapterFailure:
    """A ``BACKEND_TIMEOUT``: the statement or the request's deadline ran out."""
    return AdapterFailure(message, reason=Reason.BACKEND_TIMEOUT)


def failure(message: str) -> AdapterFailure:
    """A ``BACKEND_FAILURE`` saying ``message`` (which must hold no value from a request or a row)."""
    return AdapterFailure(message)
