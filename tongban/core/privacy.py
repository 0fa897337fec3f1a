"""Keyed digests and masks: how personal data is correlated without being disclosed.

Headers, subjects, logs and metrics never carry an ID number, a name or a phone number in clear
(PIPL; docs/domain.md "Governance fields"). They carry a keyed digest (HMAC-SHA256 under the deployment's
correlation key, so a dictionary attack over the 10^10 plausible ID numbers needs the key) and a
mask for display.
"""

from __future__ import annotations

import hashlib
import hmac

from tongban.core import identifiers


class Correlator:
    """Computes keyed digests of identifiers with one secret correlation key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("correlation key must be at least 16 bytes")
        self._key = key

    def digest(self, value: str, *, label: str = "subject") -> str:
        """Hex digest (128 bits) of ``value`` under the key, domain-separated by ``label``."""
        mac = hmac.new(self._key, label.encode() + b"\x00" + value.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]


def mask_subject(kind: int, value: str) -> str:
    """Display mask of an applicant identifier (citizen ID or USCC)."""
    del kind  # both identifiers are 18 characters; the same mask shape suits both
    return identifiers.mask_identifier(value)
