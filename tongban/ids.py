"""Message ids: 26-character ULIDs (48-bit millisecond time + 80 random bits, Crockford base32).

Sortable by creation time, so ledgers and logs list them in order; random enough that they can be
used for deduplication and replay detection across regions.
"""

from __future__ import annotations

import os
import re
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MESSAGE_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_message_id(now_ms: int | None = None) -> str:
    """Return a new ULID string."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_message_id(value: str) -> bool:
    """True when ``value`` is a well-formed message id."""
    return bool(MESSAGE_ID_RE.match(value))
