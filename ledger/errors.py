"""Error tree of the delivery ledger.

Every ledger failure is a :class:`LedgerError`, so a caller that only needs "the ledger could not do it"
catches one type; the subclasses carry structured context as keyword-only fields, never personal data.
"""

from __future__ import annotations

import functools
from enum import StrEnum


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


class CheckpointReason(StrEnum):
    """Why a note was refused."""

    MALFORMED = "MALFORMED"
    """Not a well-formed signed note or checkpoint body."""
    WRONG_ORIGIN = "WRONG_ORIGIN"
    """Well formed, but the checkpoint of another log than the one expected."""
    UNKNOWN_KEY = "UNKNOWN_KEY"
    """No signature line is from a key the verifier knows (name and key ID)."""
    BAD_SIGNATURE = "BAD_SIGNATURE"
    """A signature from a known key does not verify (or has the wrong length): the whole note is refused."""


class CheckpointError(LedgerError):
    """A checkpoint note was refused; nothing of it may be used.

    Attributes:
        reason: which check failed.
    """

    def __init__(self, message: str, *, reason: CheckpointReason) -> None:
        super().__init__(f"checkpoint refused ({reason}): {message}")
        self.reason = reason
        self.detail = message

    def __reduce__(self) -> tuple[object, ...]:
        return (functools.partial(CheckpointError, reason=self.reason), (self.detail,))


class CheckpointRefused(LedgerError):
    """The signer will not sign: the tree does not prove consistency with the last checkpoint it signed.

    Attributes:
        last_size: size of the last signed checkpoint.
        size: size of the tree it was asked to sign.
        reason: what is wrong, e.g. ``"tree shrank"``.
    """

    def __init__(self, *, last_size: int, size: int, reason: str) -> None:
        super().__init__(
            f"refusing to sign a checkpoint at size {size}: {reason} (last signed size {last_size})"
        )
        self.last_size = last_size
        self.size = size
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_refused, (self.last_size, self.size, self.reason))


def _refused(last_size: int, size: int, reason: str) -> CheckpointRefused:
    return CheckpointRefused(last_size=last_size, size=size, reason=reason)
