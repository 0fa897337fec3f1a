"""What an HTTP back end's answer, or its silence, means for one attempt of a call.

=========================  =====================  ========  ==================
the back end               reason                 retried¹  breaker failure²
=========================  =====================  ========  ==================
2xx with JSON              (the answer)           –         no
404                        NOT_FOUND              no        no
409, 422                   BACKEND_REFUSED        no        no
429, 503                   BACKEND_BUSY           yes       yes
other 5xx                  BACKEND_FAILURE        yes       yes
401, 403                   BACKEND_FAILURE        no        no
other 1xx/3xx/4xx          BACKEND_FAILURE        no        no
2xx, body not usable³      BACKEND_FAILURE        no        no
connection failed          BACKEND_FAILURE        yes       yes
timed out                  BACKEND_TIMEOUT        yes       yes
=========================  =====================  ========  ==================

¹ idempotent calls only, within the deadline. ² the breaker counts signs of a back end that is down
or overloaded; one that answers, even "no record", is healthy. ³ not JSON, a number beyond a double's
range, more than ``max_response_bytes``, or compressed.

Every message is a fixed text with the back end's name, the service code and the HTTP status: a
back end's body, headers or a URL (which holds the applicant's ID number) are never quoted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

import httpx

from connectors.adapters import AdapterFailure
from tongban.core.errors import NotFound, Reason, TongbanError

__all__ = ["AttemptFailed", "read_json", "status_failure", "transport_failure"]

_DIGITS = re.compile(r"[0-9]{1,15}")
"""A header's decimal number (ASCII digits only: ``str.isdigit`` admits "²", which ``int`` refuses)."""


class AttemptFailed(Exception):
    """One attempt's failure: the error to raise, whether another attempt may help, whether it
    counts against the back end's health, and how long the back end asked us to wait."""

    def __init__(
        self, error: TongbanError, *, retry: bool, fault: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.fault = fault
        self.retry_after = retry_after

    @classmethod
    def of(cls, what: str, text: str, reason: Reason, *, transient: bool = False) -> AttemptFailed:
        """An :class:`AdapterFailure` for ``reason``; ``transient``: retried and a breaker failure."""
        return cls(AdapterFailure(f"{what}: {text}", reason=reason), retry=transient, fault=transient)


def status_failure(what: str, status: int, headers: httpx.Headers) -> AttemptFailed:
    """The failure a non-2xx status means (see the table above)."""
    if status == 404:
        return AttemptFailed(NotFound(f"{what}: no record (HTTP 404)"), retry=False, fault=False)
    if status in (409, 422):
        return AttemptFailed.of(what, f"refused the request (HTTP {status})", Reason.BACKEND_REFUSED)
    if status in (429, 503):
        failed = AttemptFailed.of(what, f"busy (HTTP {status})", Reason.BACKEND_BUSY, transient=True)
        failed.retry_after = _retry_after(headers.get("retry-after", ""))
        return failed
    if status >= 500:
        return AttemptFailed.of(what, f"failed (HTTP {status})", Reason.BACKEND_FAILURE, transient=True)
    if status in (401, 403):
        text = f"refused the adapter's credentials (HTTP {status})"
        return AttemptFailed.of(what, text, Reason.BACKEND_FAILURE)
    return AttemptFailed.of(what, f"answered HTTP {status}", Reason.BACKEND_FAILURE)


def transport_failure(what: str, exc: httpx.HTTPError) -> AttemptFailed:
    """The failure an httpx error means: a timeout, or a connection that failed."""
    if isinstance(exc, httpx.ConnectTimeout):
        return AttemptFailed.of(what, "connecting timed out", Reason.BACKEND_TIMEOUT, transient=True)
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed.of(what, "no answer in time", Reason.BACKEND_TIMEOUT, transient=True)
    if isinstance(exc, httpx.ConnectError):
        text = "could not connect (refused, unreachable or the TLS handshake failed)"
        return AttemptFailed.of(what, text, Reason.BACKEND_FAILURE, transient=True)
    text = f"the connection failed ({type(exc).__name__})"
    return AttemptFailed.of(what, text, Reason.BACKEND_FAILURE, transient=True)


async def read_json(what: str, response: httpx.Response, *, limit: int) -> Any:
    """The parsed JSON body of a 2xx answer, read up to ``limit`` bytes and no further.

    Raises:
        AttemptFailed: a compressed body, more than ``limit`` bytes, or not JSON.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise AttemptFailed.of(
            what, "answered a compressed body (asked for identity)", Reason.BACKEND_FAILURE
        )
    declared = response.headers.get("content-length", "").strip()
    if _DIGITS.fullmatch(declared) and int(declared) > limit:
        _too_large(what, limit)
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            _too_large(what, limit)
    try:
        return json.loads(bytes(body), parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except _OutOfRange:
        text = f"answered HTTP {response.status_code} with a number out of range"
        raise AttemptFailed.of(what, text, Reason.BACKEND_FAILURE) from None
    except (ValueError, RecursionError):
        text = f"answered HTTP {response.status_code} with a body that is not JSON"
        raise AttemptFailed.of(what, text, Reason.BACKEND_FAILURE) from None


def _retry_after(value: str) -> float | None:
    """Retry-After in seconds (its delta-seconds form only; a date or garbage is ignored)."""
    value = value.strip()
    return float(value) if _DIGITS.fullmatch(value) else None


def _too_large(what: str, limit: int) -> NoReturn:
    raise AttemptFailed.of(what, f"answered more than {limit} bytes", Reason.BACKEND_FAILURE)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class _OutOfRange(ValueError):
    """A number an answer cannot carry (answers are protobuf Structs: every number is a double)."""


_MAX_INT_DIGITS = 300


def _int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _OutOfRange(text[:8])
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange(text[:8])
    return value
