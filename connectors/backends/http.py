"""The declarative HTTP/REST adapter: a region's REST back ends called from configuration alone.

One :class:`HttpBackend` per ``[backends.<name>]`` with ``kind = "http"`` holds the pooled client
(HTTP/1.1, or HTTP/2 by ALPN), the credentials, the concurrency limit and the circuit breaker; one
:class:`HttpService` per ``[services.<code>]`` it answers builds each request from the validated
fields and maps the answer back to the item's declared response fields. docs/adapters/http.md
describes the settings; :mod:`connectors.backends.http_settings` checks them at start-up.

Back ends' answers are treated as hostile: bodies are read up to ``max_response_bytes`` and no
further, never decompressed, never quoted in an error, a log line or a span; a URL (which holds the
applicant's ID number) is never logged either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx
import structlog
from opentelemetry import trace

from connectors.adapters import AdapterFailure, AdapterRequest
from connectors.backends.breaker import CircuitBreaker, Permit
from connectors.backends.http_answers import AttemptFailed, read_json, status_failure, transport_failure
from connectors.backends.http_pool import ConnectionPool
from connectors.backends.http_settings import (
    IDEMPOTENCY_KEY,
    TRACEPARENT,
    AuthKind,
    BackendSettings,
    Body,
    Method,
    ServiceSettings,
)
from connectors.backends.signing import Auth, BearerToken, HmacSigner, NoAuth
from tongban.core.catalogue import CatalogueItem
from tongban.core.errors import ConfigError, Reason
from tongban.runtime import telemetry
from tongban.runtime.config import Config

__all__ = ["HttpBackend", "HttpCall", "HttpService"]

log = structlog.get_logger("tongban.connector.http")

_RESERVE_MAX_S: Final = 0.1
_RESERVE_SHARE: Final = 0.2
"""Of the time left to a request's deadline, the adapter leaves this share (at most
``_RESERVE_MAX_S``) to the connector for sealing, the ledger and the reply: the adapter's own
timeout fires first, so a hanging back end is a BACKEND_TIMEOUT here (and a breaker failure), not a
cancellation from outside."""
_MAX_RETRY_AFTER_S: Final = 30.0
"""A Retry-After longer than this ends the retries at once (as does one past the deadline)."""
_CLOSE_TIMEOUT_S: Final = 2.0
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
"""A header value the adapter sends: visible ASCII, spaces and tabs; no CR or LF (a value could
otherwise add a header line) and nothing a back end might decode in its own way."""
_FIXED_HEADERS: Final = {
    "Accept": "application/json",
    # Compressed answers are refused: a small compressed body can inflate past any size bound.
    "Accept-Encoding": "identity",
    "User-Agent": "tongban-connector",
}


@dataclass(frozen=True)
class HttpCall:
    """One request, built from settings and a request's values; the same for every attempt."""

    backend: str
    service: str
    method: Method
    url: str
    headers: Mapping[str, str]
    body: bytes
    idempotent: bool

    @property
    def what(self) -> str:
        return f"back end {self.backend} (service {self.service})"


class HttpBackend:
    """An HTTP back end: pooled client, credentials, concurrency limit, circuit breaker.

    Build it with :meth:`from_table`; :meth:`service` gives the adapter of each catalogue item it
    answers; :meth:`aclose` closes the pool.
    """

    def __init__(self, name: str, settings: BackendSettings, *, auth: Auth, tls: ssl.SSLContext) -> None:
        self.name = name
        self.settings = settings
        self._auth = auth
        s = settings

        def client(connections: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                http2=s.http2,
                # One context for every client (httpx would load a CA bundle for each).
                verify=tls,
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
                follow_redirects=False,
                # No proxy, CA bundle or credentials from the environment: only what the config says.
                trust_env=False,
            )

        self._pool = ConnectionPool(s.max_concurrency, client)
        self.breaker = CircuitBreaker(failures=s.breaker_failures, cooldown_s=s.breaker_cooldown_s)
        self._closed = False

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], cfg: Config) -> HttpBackend:
        """The back end ``[backends.<name>]`` describes; files resolve through ``cfg.path``.

        Raises:
            ConfigError: a bad or unknown setting, or a file that does not load.
        """
        settings = BackendSettings.parse(name, table)
        auth: Auth = NoAuth()
        if settings.auth is AuthKind.BEARER:
            auth = BearerToken(settings.token(cfg, name))
        elif settings.auth is AuthKind.HMAC:
            auth = HmacSigner(settings.hmac_key_id, settings.hmac_secret(cfg, name))
        return cls(name, settings, auth=auth, tls=_tls_context(name, settings, cfg))

    def service(self, code: str, table: Mapping[str, Any], item: CatalogueItem) -> HttpService:
        """The adapter of catalogue item ``code`` (``table``: its ``[services.<code>]`` settings
        without ``backend``).

        Raises:
            ConfigError: a bad or unknown setting, a template naming no source or no form field of
                ``item``, or a response field ``item`` does not declare.
        """
        return HttpService(self, code, ServiceSettings.parse(code, table, item))

    async def aclose(self) -> None:
        """Close the pool (bounded; idempotent)."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._pool.aclose()

    async def __aenter__(self) -> HttpBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def exchange(self, call: HttpCall, *, deadline: float) -> Any:
        """Send ``call`` (retrying an idempotent one) and return the answer's parsed JSON.

        Raises:
            NotFound: HTTP 404.
            AdapterFailure: every other failure, its reason saying which.
        """
        if self._closed:
            raise AdapterFailure(f"{call.what}: the connector is stopping")
        loop = asyncio.get_running_loop()
        end = _budget_end(call, loop.time(), deadline)
        attempts = 1 + (self.settings.retries if call.idempotent else 0)
        failed: AttemptFailed | None = None
        made = 0
        span = trace.get_current_span()
        span.set_attribute("http.request.method", call.method.value)
        span.set_attribute("tongban.backend", self.name)
        for attempt in range(attempts):
            if failed is not None:
                delay = self._backoff(attempt, failed.retry_after)
                if delay is None or (end is not None and loop.time() + delay >= end):
                    break
                await asyncio.sleep(delay)  # the back-off between attempts
            permit = self.breaker.acquire()
            if permit is None:
                if failed is not None:
                    break
                raise AdapterFailure(
                    f"{call.what}: failed {self.settings.breaker_failures} times in a row, calls "
                    f"resume after a {self.settings.breaker_cooldown_s:g} s cool-down",
                    reason=Reason.BACKEND_CIRCUIT_OPEN,
                )
            made += 1
            span.set_attribute("http.request.resend_count", attempt)
            try:
                document = await self._attempt(call, end)
            except AttemptFailed as f:
                self._settle(permit, healthy=not f.fault)
                log.warning(
                    "http_backend.attempt_failed",
                    backend=self.name,
                    service=call.service,
                    reason=f.error.reason,
                    attempt=attempt + 1,
                )
                if not f.retry:
                    raise f.error from None
                failed = f
            except BaseException:
                self.breaker.abandoned(permit)
                raise
            else:
                self._settle(permit, healthy=True)
                return document
        assert failed is not None
        error = failed.error
        if made > 1:
            raise type(error)(f"{error.message} ({made} attempts)", reason=error.reason) from None
        raise error from None

    def _settle(self, permit: Permit, *, healthy: bool) -> None:
        before = self.breaker.state
        if healthy:
            self.breaker.succeeded(permit)
        else:
            self.breaker.failed(permit)
        if self.breaker.state != before:
            log.warning("http_backend.breaker", backend=self.name, state=self.breaker.state.value)

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Full-jitter exponential back-off before ``attempt`` (1: the first retry), at least the
        back end's Retry-After; None: the back end asked for a wait too long to be worth it."""
        delay = random.uniform(0, self.settings.retry_backoff_s * 2 ** (attempt - 1))
        if retry_after is not None:
            if retry_after > _MAX_RETRY_AFTER_S:
                return None
            delay = max(delay, retry_after)
        return delay

    async def _attempt(self, call: HttpCall, end: float | None) -> Any:
        """One attempt, within its own time bound and the deadline."""
        loop = asyncio.get_running_loop()
        s = self.settings
        stop = loop.time() + s.connect_timeout_s + s.read_timeout_s
        if end is not None:
            stop = min(stop, end)
        waiting_for_slot = True
        try:
            async with asyncio.timeout_at(stop), self._pool.slot() as client:
                waiting_for_slot = False
                left = max(stop - loop.time(), 0.001)
                request = client.build_request(
                    call.method.value,
                    call.url,
                    headers=call.headers,
                    content=call.body or None,
                    timeout=httpx.Timeout(
                        connect=min(s.connect_timeout_s, left),
                        read=min(s.read_timeout_s, left),
                        write=min(s.read_timeout_s, left),
                        pool=left,
                    ),
                )
                request.headers.update(self._auth.headers(call.method.value, request.url.raw_path, call.body))
                response = await client.send(request, stream=True)
                try:
                    return await self._answer(call, response)
                finally:
                    await response.aclose()
        except TimeoutError:
            if waiting_for_slot:
                text = f"all {s.max_concurrency} connections stayed busy until the deadline"
                raise AttemptFailed.of(call.what, text, Reason.BACKEND_BUSY) from None
            raise AttemptFailed.of(
                call.what, "no answer in time", Reason.BACKEND_TIMEOUT, transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise transport_failure(call.what, exc) from None

    async def _answer(self, call: HttpCall, response: httpx.Response) -> Any:
        status = response.status_code
        trace.get_current_span().set_attribute("http.response.status_code", status)
        if not 200 <= status < 300:
            raise status_failure(call.what, status, response.headers)
        return await read_json(call.what, response, limit=self.settings.max_response_bytes)


class HttpService:
    """The adapter of one catalogue item answered by an :class:`HttpBackend`."""

    def __init__(self, backend: HttpBackend, code: str, settings: ServiceSettings) -> None:
        self.backend = backend
        self.code = code
        self.settings = settings
        self._base = backend.settings.base_url.rstrip("/")

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        """Ask the back end; its answer mapped to the item's response fields (or, with no
        ``response`` table, its top-level object as is: the connector keeps the declared fields).

        Raises:
            NotFound: the back end answered 404.
            AdapterFailure: anything else went wrong; the reason says what.
        """
        call = self._build(request)
        document = await self.backend.exchange(call, deadline=request.deadline)
        if self.settings.response is not None:
            return self.settings.response.apply(document)
        if not isinstance(document, dict):
            raise AdapterFailure(f"{call.what}: answered JSON that is not an object")
        return document

    def _build(self, request: AdapterRequest) -> HttpCall:
        s = self.settings
        url = self._base + s.path.fill(request, _path_segment)
        query = [(name, t.fill(request)) for name, t in s.query.items()]
        # A parameter whose value is empty (an optional field left out) is not sent.
        encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query if v)
        if encoded:
            url += "?" + encoded
        headers = dict(_FIXED_HEADERS)
        for name, template in s.headers.items():
            value = template.fill(request)
            if not _HEADER_VALUE.fullmatch(value):
                raise AdapterFailure(
                    f"service {self.code}: the value for header {name} is not printable ASCII",
                    reason=Reason.INVALID_REQUEST,
                )
            headers[name] = value
        if traceparent := telemetry.current_traceparent():
            headers[TRACEPARENT] = traceparent
        body = b""
        if s.body is not None:
            body = json.dumps(_fill_body(s.body, request), ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if s.method is Method.POST:
            # The back end's idempotency key: the same on a redelivered Submit.
            headers[IDEMPOTENCY_KEY] = request.message_id
        return HttpCall(self.backend.name, self.code, s.method, url, headers, body, s.idempotent)


def _path_segment(value: str) -> str:
    """``value`` as one path segment: every reserved character encoded, so it cannot add a segment,
    a query or a fragment; an empty value or a dot segment would change the path, and is refused."""
    if value in ("", ".", ".."):
        raise AdapterFailure(
            "a value for the URL path is empty or a dot segment", reason=Reason.INVALID_REQUEST
        )
    return quote(value, safe="")


def _fill_body(body: Body, request: AdapterRequest) -> dict[str, Any]:
    return {
        k: v.of(request) if not isinstance(v, Mapping) else _fill_body(v, request) for k, v in body.items()
    }


def _budget_end(call: HttpCall, now: float, deadline: float) -> float | None:
    """The loop time by which the adapter must be done, or None (no deadline)."""
    if deadline <= 0:
        return None
    left = deadline - time.time()
    if left <= 0:
        raise AdapterFailure(
            f"{call.what}: the deadline passed before the call", reason=Reason.BACKEND_TIMEOUT
        )
    return now + left - min(_RESERVE_MAX_S, left * _RESERVE_SHARE)


def _tls_context(name: str, s: BackendSettings, cfg: Config) -> ssl.SSLContext:
    """The TLS client context: the back end's CA file (else the system's roots) and the client
    certificate for mutual TLS (an http back end never uses it)."""
    where = f"[backends.{name}]"
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.path(s.ca_file)) if s.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where} ca_file: cannot load {s.ca_file} ({type(exc).__name__})") from exc
    if s.client_cert:
        try:
            ctx.load_cert_chain(cfg.path(s.client_cert), cfg.path(s.client_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where} client_cert/client_key: cannot load them ({type(exc).__name__})"
            ) from exc
    return ctx
