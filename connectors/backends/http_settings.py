"""The settings of an HTTP back end (``[backends.<name>]``) and of a service it answers
(``[services.<code>]``), checked at start-up: every unknown key, wrong type, bad template or
unreadable file is a :class:`~tongban.core.errors.ConfigError` naming the setting, never a surprise
at request time. docs/adapters/http.md describes each setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connectors.backends.mapping import ResponseMap, Source, Template
from connectors.backends.signing import AUTHORIZATION, SigningHeader
from tongban.core.catalogue import CatalogueItem
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

__all__ = [
    "AuthKind",
    "BackendSettings",
    "Body",
    "Method",
    "ServiceSettings",
    "read_secret",
]

KIND = "http"
"""``kind`` of an HTTP back end's table."""

IDEMPOTENCY_KEY = "Idempotency-Key"
TRACEPARENT = "traceparent"


class AuthKind(StrEnum):
    NONE = "none"
    BEARER = "bearer"
    HMAC = "hmac"


class Method(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"


_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
"""A bearer token: visible ASCII without spaces (it goes into a header as is)."""
_MIN_SECRET_BYTES = 16
_JSON_KEY_LENGTH = 64

# Headers the adapter sets itself, or that belong to the HTTP layer: a service may not set them.
_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Accept-Encoding",
        "Cookie",
        AUTHORIZATION,
        IDEMPOTENCY_KEY,
        TRACEPARENT,
        *SigningHeader,
    )
)
_PERSONAL_SOURCES = frozenset({"applicant.id", "applicant.name"})


@dataclass(frozen=True)
class BackendSettings:
    """``[backends.<name>]`` with ``kind = "http"``; see docs/adapters/http.md."""

    base_url: str
    """``http(s)://host[:port][/base/path]``; every service path is appended to it."""
    http2: bool = False
    """Offer HTTP/2 (negotiated by ALPN, so an https back end only)."""
    ca_file: str = ""
    """PEM CA bundle the back end's certificate must chain to (default: the system's roots)."""
    client_cert: str = ""
    """PEM client certificate for mutual TLS (with ``client_key``)."""
    client_key: str = ""
    auth: AuthKind = AuthKind.NONE
    token_file: str = ""
    """``auth = "bearer"``: file holding the token (read at start-up, whitespace stripped)."""
    hmac_key_id: str = ""
    """``auth = "hmac"``: the key id sent in X-Tongban-Key-Id."""
    hmac_secret_file: str = ""
    """``auth = "hmac"``: file holding the shared secret (at least 16 bytes once stripped)."""
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 10.0
    """Longest wait for the back end's whole answer, per attempt (never past the deadline)."""
    max_concurrency: int = 16
    """Calls in flight to this back end at once; more wait for a slot, within their deadline."""
    max_response_bytes: int = 1 << 20
    retries: int = 2
    """Further attempts of an idempotent call after a transient failure."""
    retry_backoff_s: float = 0.1
    """First back-off; doubled per retry, fully jittered."""
    breaker_failures: int = 5
    """Consecutive failures that open the circuit breaker (0: never)."""
    breaker_cooldown_s: float = 10.0
    """How long an open breaker refuses calls before one trial call."""

    @classmethod
    def parse(cls, name: str, table: Mapping[str, Any]) -> BackendSettings:
        where = f"[backends.{name}]"
        if table.get("kind") != KIND:
            raise ConfigError(f'{where}: kind must be "{KIND}"')
        values = _typed(cls, {k: v for k, v in table.items() if k != "kind"}, where=where)
        try:
            values["auth"] = AuthKind(values.get("auth", AuthKind.NONE))
        except ValueError:
            raise ConfigError(f'{where} auth: one of "none", "bearer", "hmac"') from None
        settings = cls(**values)
        settings._check(where)
        return settings

    def _check(self, where: str) -> None:
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{where} base_url: an http:// or https:// URL with a host")
        if url.query or url.fragment or url.username or url.password:
            raise ConfigError(f"{where} base_url: no query, fragment or user info")
        https = url.scheme == "https"
        if not https and (self.http2 or self.ca_file or self.client_cert or self.client_key):
            raise ConfigError(f"{where}: http2, ca_file and client_cert/client_key need an https base_url")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError(f"{where}: client_cert and client_key go together")
        if (self.auth is AuthKind.BEARER) != bool(self.token_file):
            raise ConfigError(f'{where}: token_file is set exactly when auth = "bearer"')
        hmac_set = bool(self.hmac_key_id or self.hmac_secret_file)
        if (self.auth is AuthKind.HMAC) != hmac_set or (
            hmac_set and not (self.hmac_key_id and self.hmac_secret_file)
        ):
            raise ConfigError(f'{where}: hmac_key_id and hmac_secret_file are set exactly when auth = "hmac"')
        if self.hmac_key_id and not _KEY_ID.fullmatch(self.hmac_key_id):
            raise ConfigError(f"{where} hmac_key_id: 1-64 of A-Z a-z 0-9 . _ -")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0 or self.breaker_cooldown_s <= 0:
            raise ConfigError(f"{where}: connect_timeout_s, read_timeout_s and breaker_cooldown_s are > 0")
        if self.max_concurrency < 1 or self.max_response_bytes < 1:
            raise ConfigError(f"{where}: max_concurrency and max_response_bytes are >= 1")
        if self.retries < 0 or self.retry_backoff_s < 0 or self.breaker_failures < 0:
            raise ConfigError(f"{where}: retries, retry_backoff_s and breaker_failures are >= 0")

    def token(self, cfg: Config, name: str) -> str:
        """The bearer token (``auth = "bearer"``)."""
        token = read_secret(cfg.path(self.token_file), where=f"[backends.{name}] token_file").decode(
            "ascii", errors="replace"
        )
        if not _TOKEN.fullmatch(token):
            raise ConfigError(f"[backends.{name}] token_file: the token is visible ASCII without spaces")
        return token

    def hmac_secret(self, cfg: Config, name: str) -> bytes:
        """The HMAC secret (``auth = "hmac"``)."""
        where = f"[backends.{name}] hmac_secret_file"
        secret = read_secret(cfg.path(self.hmac_secret_file), where=where)
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigError(f"{where}: the secret must be at least {_MIN_SECRET_BYTES} bytes")
        return secret


def read_secret(path: Path, *, where: str) -> bytes:
    """A secret file's content, surrounding whitespace stripped; ConfigError if unreadable or empty
    (naming the setting, never the content)."""
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({type(exc).__name__})") from exc
    if not data:
        raise ConfigError(f"{where}: {path} is empty")
    return data


Body = Mapping[str, "Source | Body"]
"""A JSON body: object keys → a request value source, or a nested object."""


@dataclass(frozen=True)
class ServiceSettings:
    """``[services.<code>]`` answered by an HTTP back end; see docs/adapters/http.md."""

    method: Method
    path: Template
    query: Mapping[str, Template] = field(default_factory=dict)
    headers: Mapping[str, Template] = field(default_factory=dict)
    body: Body | None = None
    response: ResponseMap | None = None
    idempotent: bool = True

    @classmethod
    def parse(cls, code: str, table: Mapping[str, Any], item: CatalogueItem) -> ServiceSettings:
        where = f"[services.{code}]"
        known = {"method", "path", "query", "headers", "body", "response", "idempotent"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            method = Method(str(table.get("method", "GET")).upper())
        except ValueError:
            raise ConfigError(f"{where} method: GET, POST or PUT") from None
        if "path" not in table:
            raise ConfigError(f'{where}: path is required (e.g. "/persons/{{applicant.id}}")')
        path = Template.parse(table["path"], where=f"{where} path")
        literal = "".join(p for p in path.parts if isinstance(p, str))
        if not table["path"].startswith("/") or "?" in literal or "#" in literal:
            raise ConfigError(f"{where} path: starts with / and has no ? or # (put parameters in query)")
        form = {f.name: f for f in item.fields}
        for source in path.sources:
            spec = form.get(source.name.removeprefix("fields."))
            if source.name.startswith("fields.") and spec is not None and not spec.required:
                raise ConfigError(
                    f"{where} path: {source.name} is optional in the form; an empty path segment "
                    "would change the path (put it in query)"
                )
        query = _templates(table.get("query", {}), where=f"{where} query")
        headers = _templates(table.get("headers", {}), where=f"{where} headers")
        for name, template in headers.items():
            if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
                raise ConfigError(f"{where} headers: {name!r} is not a header a service may set")
            for source in template.sources:
                spec = form.get(source.name.removeprefix("fields."))
                if source.name in _PERSONAL_SOURCES or (spec is not None and spec.personal):
                    raise ConfigError(f"{where} headers.{name}: personal data never goes into a header")
        body = None
        if "body" in table:
            if method is Method.GET:
                raise ConfigError(f"{where} body: a GET has no body (use query)")
            body = _body(table["body"], where=f"{where} body")
        response = None
        if "response" in table:
            response = ResponseMap.parse(table["response"], where=f"{where} response")
            undeclared = sorted(set(response.paths) - set(item.response_fields))
            if undeclared:
                raise ConfigError(
                    f"{where} response: {undeclared[0]!r} is not a response field of {item.code}"
                )
        idempotent = table.get("idempotent", method is not Method.POST)
        if not isinstance(idempotent, bool):
            raise ConfigError(f"{where} idempotent: true or false")
        settings = cls(method, path, query, headers, body, response, idempotent)
        for source in settings.sources():
            name = source.name.removeprefix("fields.")
            if source.name.startswith("fields.") and name not in form:
                raise ConfigError(f"{where}: {source.name} is not a form field of {item.code}")
        return settings

    def sources(self) -> list[Source]:
        """Every request value this service sends."""
        out = [*self.path.sources]
        for t in (*self.query.values(), *self.headers.values()):
            out.extend(t.sources)
        stack = [self.body] if self.body is not None else []
        while stack:
            for v in stack.pop().values():
                if isinstance(v, Source):
                    out.append(v)
                else:
                    stack.append(v)
        return out


def _templates(table: Any, *, where: str) -> dict[str, Template]:
    if not isinstance(table, Mapping):
        raise ConfigError(f'{where}: a table of name = "template"')
    out: dict[str, Template] = {}
    for name, text in table.items():
        if not name or len(name) > _JSON_KEY_LENGTH:
            raise ConfigError(f"{where}: {name!r} is not a usable name")
        out[name] = Template.parse(text, where=f"{where}.{name}")
    return out


def _body(table: Any, *, where: str, depth: int = 0) -> Body:
    if not isinstance(table, Mapping) or depth > 4:
        raise ConfigError(f'{where}: a table of json_key = "source" (nested tables for objects, 4 deep)')
    out: dict[str, Source | Body] = {}
    for key, value in table.items():
        if not key or len(key) > _JSON_KEY_LENGTH:
            raise ConfigError(f"{where}: {key!r} is not a usable JSON key")
        if isinstance(value, Mapping):
            out[key] = _body(value, where=f"{where}.{key}", depth=depth + 1)
        else:
            out[key] = Source.parse(value, where=f"{where}.{key}")
    return out


_TYPES: dict[str, type] = {
    "base_url": str,
    "http2": bool,
    "ca_file": str,
    "client_cert": str,
    "client_key": str,
    "auth": str,
    "token_file": str,
    "hmac_key_id": str,
    "hmac_secret_file": str,
    "connect_timeout_s": float,
    "read_timeout_s": float,
    "max_concurrency": int,
    "max_response_bytes": int,
    "retries": int,
    "retry_backoff_s": float,
    "breaker_failures": int,
    "breaker_cooldown_s": float,
}


def _typed(cls: type[BackendSettings], table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """``table``'s values, each checked against its setting's type (an int is a float, a bool is
    neither)."""
    assert set(_TYPES) == {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        expected = _TYPES.get(key)
        if expected is None:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where} {key}: must be {expected.__name__}")
        out[key] = value
    if "base_url" not in out:
        raise ConfigError(f"{where}: base_url is required")
    return out
