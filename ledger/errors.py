"""Error tree of the delivery ledger.

Every ledger failure is a :class:`LedgerError`, so a caller that only needs "the ledger could not do it"
catches one type; the subclasses carry structured context as keyword-only fields, never personal data.
"""

from __future__ import annotations

import functools


class LedgerError(Exception):
    """Root of all ledger errors: the file cannot be opened, belongs to another region, a batch failed, …"""


class LedgerClosed(LedgerError):
    """The ledger is not open: it was never opened, or it is closing or closed."""


class ChainBroken(LedgerError):
    """The hash chain does not verify.

    Attributes:
        index: position of the first entry that does not verify.
        reason: what is wrong with it, e.g. ``"entry hash mismatch"``.
    """

    def __init__(self, *, index: int, reason: str) -> None:
        super().__init__(f"ledger chain broken at entry {index}: {reason}")
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # The default Exception pickling calls cls(*args), which keyword-only fields cannot take.
        return (functools.partial(ChainBroken, index=self.index, reason=self.reason), ())
