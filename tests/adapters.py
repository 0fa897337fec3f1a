"""Adapters that only tests use: a back end that is always down, and a counter of back-end calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.adapters import (
    Adapter,
    AdapterFailure,
    AdapterRequest,
    CaseAdapter,
    StatusUpdate,
    submit_via_call,
)


class FailingAdapter:
    """A back end that is always down (raises :class:`AdapterFailure`)."""

    def __init__(self, message: str = "demo back end is unavailable") -> None:
        self.message = message

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        raise AdapterFailure(self.message)


class CountingAdapter:
    """Wraps an adapter and counts its calls per message id.

    Attributes:
        inner: the wrapped adapter.
        calls: number of calls per message id.
    """

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All calls so far."""
        return sum(self.calls.values())

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        self.calls[request.message_id] += 1
        return await self.inner.call(request)

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        """Counted once per Submit reaching the back end (whatever the inner adapter does)."""
        self.calls[request.message_id] += 1
        if isinstance(self.inner, CaseAdapter):
            return await self.inner.submit_case(request)
        return await submit_via_call(self.inner, request)
