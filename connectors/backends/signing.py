"""How the HTTP adapter proves to a back end who is calling: a bearer token, or an HMAC signature.

The HMAC scheme follows what government API gateways do (a key id, a timestamp, a one-time nonce and
a digest of the body, signed with a shared secret). The signed text, the *canonical request*, is six
lines joined by ``\\n`` (no trailing newline), UTF-8:

.. code-block:: text

    <METHOD>            GET, POST or PUT
    <path>              the path exactly as sent on the request line, percent-encoded, no query
    <query>             the query string exactly as sent, without the "?" (an empty line if none)
    <timestamp>         the X-Tongban-Timestamp header: Unix time in whole seconds
    <nonce>             the X-Tongban-Nonce header: 32 lowercase hex digits, new for every attempt
    <content sha256>    the X-Tongban-Content-SHA256 header: hex SHA-256 of the body bytes as sent
                        (of no bytes for a GET)

``X-Tongban-Signature`` is the standard base64 of HMAC-SHA256(secret, canonical request), and
``X-Tongban-Key-Id`` names the secret. A back end recomputes the canonical request from what it
received, compares signatures in constant time, checks the body digest, refuses a timestamp more
than a few minutes off and a nonce it has seen within that window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = ["Auth", "BearerToken", "HmacSigner", "NoAuth", "SigningHeader", "canonical_request"]


class SigningHeader(StrEnum):
    """The request headers of the HMAC scheme."""

    KEY_ID = "X-Tongban-Key-Id"
    TIMESTAMP = "X-Tongban-Timestamp"
    NONCE = "X-Tongban-Nonce"
    CONTENT_SHA256 = "X-Tongban-Content-SHA256"
    SIGNATURE = "X-Tongban-Signature"


AUTHORIZATION = "Authorization"


def canonical_request(
    method: str, path: str, query: str, timestamp: str, nonce: str, content_sha256: str
) -> bytes:
    """The text an HMAC signature covers (see the module docstring)."""
    return "\n".join((method, path, query, timestamp, nonce, content_sha256)).encode()


class Auth(Protocol):
    """Headers that authenticate one attempt of a request."""

    def headers(self, method: str, raw_path: bytes, body: bytes) -> Mapping[str, str]:
        """The headers for a request with this method, request target (path and query as sent)
        and body."""
        ...


class NoAuth:
    """No credentials (the back end trusts the network, or mutual TLS says who calls)."""

    def headers(self, method: str, raw_path: bytes, body: bytes) -> Mapping[str, str]:
        return {}


@dataclass(frozen=True)
class BearerToken:
    """``Authorization: Bearer <token>``, the token read once at start-up."""

    token: str = field(repr=False)

    def headers(self, method: str, raw_path: bytes, body: bytes) -> Mapping[str, str]:
        return {AUTHORIZATION: f"Bearer {self.token}"}


@dataclass(frozen=True)
class HmacSigner:
    """Signs each attempt with a fresh timestamp and nonce (see the module docstring)."""

    key_id: str
    secret: bytes = field(repr=False)
    clock: Callable[[], float] = time.time

    def headers(self, method: str, raw_path: bytes, body: bytes) -> Mapping[str, str]:
        path, _, query = raw_path.decode("ascii").partition("?")
        timestamp = str(int(self.clock()))
        nonce = secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        mac = hmac.new(
            self.secret, canonical_request(method, path, query, timestamp, nonce, digest), hashlib.sha256
        )
        return {
            SigningHeader.KEY_ID: self.key_id,
            SigningHeader.TIMESTAMP: timestamp,
            SigningHeader.NONCE: nonce,
            SigningHeader.CONTENT_SHA256: digest,
            SigningHeader.SIGNATURE: base64.b64encode(mac.digest()).decode(),
        }
