"""Message ids: 26-character ULIDs (48-bit millisecond time + 80 random bits, Crockford base32).

Sortable by creation time, so ledgers and logs list them in order; random enough that they can be
used for deduplication and replay detection across regions.

Case numbers (办件编号), as :func:`new_case_no` makes them: the submitting region's code, the
acceptance date (UTC) and the last 10 characters of a message id (``440300-20261122-7K3M9Q2XWA``);
:func:`is_case_no` and :func:`case_region` read that format.
"""

from __future__ import annotations

import os
import re
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MESSAGE_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
CASE_NO_RE = re.compile(r"^(?P<region>[0-9]{6})-[0-9]{8}-[0-9A-Z]{10}$")
TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


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
    # fullmatch: ``$`` alone would also accept a trailing newline.
    return bool(MESSAGE_ID_RE.fullmatch(value))


def message_id_time_ms(value: str) -> int | None:
    """When a message id was made, in Unix milliseconds (a ULID's first 10 characters are its 48-bit
    millisecond time); None when ``value`` is not a message id."""
    if not is_message_id(value):
        return None
    ms = 0
    for ch in value[:10]:
        ms = ms * 32 + _CROCKFORD.index(ch)
    return ms


def new_case_no(region: str) -> str:
    """A new case number (办件编号) of a case submitted in ``region``."""
    return f"{region}-{time.strftime('%Y%m%d', time.gmtime())}-{new_message_id()[-10:]}"


def is_case_no(value: str) -> bool:
    """True when ``value`` is a well-formed case number."""
    return bool(CASE_NO_RE.fullmatch(value))


def case_region(value: str) -> str | None:
    """The code of the region a case number was submitted in, or None when it is not a case number."""
    m = CASE_NO_RE.fullmatch(value)
    return m.group("region") if m else None


def is_trace_id(value: str) -> bool:
    """True when ``value`` is a W3C trace id as the ledger records it: 32 lower-case hex digits, not
    all zero (the W3C "invalid" id)."""
    return bool(TRACE_ID_RE.fullmatch(value)) and value != "0" * 32
