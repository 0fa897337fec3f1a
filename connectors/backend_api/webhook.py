"""The webhook: each delivery POSTed to the case system, signed, retried, dead-lettered.

The request (see docs/backend-api.md):

* ``POST <webhook_url>`` with ``Content-Type: application/json``; the body is the Delivery in
  protobuf's JSON mapping (lowerCamelCase names: ``deliveryId``, ``caseNo``, ``receivedAt`` ...);
* ``X-Tongban-Delivery: <delivery id>`` (deduplicate on it: a delivery may come more than once);
* ``X-Tongban-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, the
  secret being the bytes of ``[backend_api] webhook_secret_file`` (surrounding whitespace stripped).
  A receiver recomputes the HMAC over the exact body bytes, compares in constant time, and refuses
  a ``t`` far from its clock (:func:`verify_signature` does all three).

Any 2xx answer acknowledges the delivery. Anything else (another status, a refused connection, a
timeout after ``webhook_timeout_s``, a TLS failure) is retried after the next delay of
``webhook_backoff_s`` (the last one repeating), jittered; after ``webhook_max_attempts`` posts the
delivery is dead: logged, counted (``tongban.dead_letters`` with reason ``BACKEND_FAILURE``) and
listed by ``tongban case deliveries --state dead``, from where the operator may put it back. A
WatchDeliveries stream may take a delivery between two webhook attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import ssl
import time
import uuid
from enum import StrEnum
from typing import Final

import httpx
import structlog
from google.protobuf import json_format

from connectors.backend_api.queue import RECHECK_S, DeliveryQueue, Taken, Via
from connectors.backend_api.sealed import DeliveryVault
from tongban.core.errors import ConfigError, Reason, TongbanError
from tongban.runtime.config import Config
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.shutdown import Deadline, finish_tasks, stop_task

log = structlog.get_logger("tongban.connector.backend_api")

CONCURRENCY: Final = 4
"""Posts in flight at once."""
_LEASE_MARGIN_S: Final = 5.0
"""A post holds its delivery this much longer than its timeout: a connector that dies mid-post
frees it soon after."""
MIN_SECRET_BYTES: Final = 16
SIGNATURE_TOLERANCE_S: Final = 300.0
"""How far from the receiver's clock a signature's ``t`` may be (:func:`verify_signature`)."""


class WebhookHeader(StrEnum):
    """The HTTP headers of a webhook POST."""

    SIGNATURE = "X-Tongban-Signature"
    DELIVERY = "X-Tongban-Delivery"


def signature(secret: bytes, body: bytes, t: int) -> str:
    """The ``X-Tongban-Signature`` value of ``body`` signed at Unix time ``t``."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: bytes, header: str, body: bytes, *, now_s: float, tolerance_s: float = SIGNATURE_TOLERANCE_S
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance_s`` of ``now_s``
    (for receivers written in Python, and the tests)."""
    parts = dict(p.partition("=")[::2] for p in header.split(","))
    t, mac = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or abs(now_s - int(t)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, int(t)), f"t={t},v1={mac}")


def jittered(delay: float) -> float:
    """``delay`` with equal jitter: between half of it and all of it (retries of many deliveries
    after one outage spread out instead of arriving together)."""
    return delay / 2 + random.uniform(0, delay / 2)


def read_secret(cfg: Config) -> bytes:
    """The webhook's HMAC key from ``[backend_api] webhook_secret_file``.

    Raises:
        ConfigError: the file cannot be read, or holds fewer than 16 bytes.
    """
    path = cfg.path(cfg.backend_api.webhook_secret_file)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"[backend_api] webhook_secret_file {path} cannot be read") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"[backend_api] webhook_secret_file must hold at least {MIN_SECRET_BYTES} bytes")
    return secret


def check_url(cfg: Config) -> str:
    """``[backend_api] webhook_url``: http(s), and https outside dev mode (the body carries the
    applicant's personal data).

    Raises:
        ConfigError: another scheme, or plain http outside dev mode.
    """
    url = httpx.URL(cfg.backend_api.webhook_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("[backend_api] webhook_url must be an http(s) URL")
    if url.scheme == "http" and not cfg.gateway.dev_mode:
        raise ConfigError("[backend_api] webhook_url must be https outside dev mode")
    return str(url)


class WebhookPusher:
    """Posts pending deliveries to the webhook. ``start()``/``stop()``, idempotent.

    Args:
        cfg: the connector's config (``[backend_api]``).
        queue: the deliveries (open while pushing).
        vault: opens their sealed bodies.
        metrics: counts dead-lettered deliveries.
    """

    def __init__(
        self, cfg: Config, queue: DeliveryQueue, vault: DeliveryVault, *, metrics: Metrics = NO_METRICS
    ) -> None:
        api = cfg.backend_api
        self.url = check_url(cfg)
        self.secret = read_secret(cfg)
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(cfg.path(api.webhook_ca))) if api.webhook_ca else True
        )
        self.timeout_s = api.webhook_timeout_s
        self.max_attempts = api.webhook_max_attempts
        self.backoff_s = tuple(api.webhook_backoff_s)
        self.queue = queue
        self.vault = vault
        self.metrics = metrics
        self.owner = f"webhook:{uuid.uuid4().hex}"
        self.delivered = 0
        self.dead = 0
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._stopping = False

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        # No redirects, no proxy from the environment: the body goes to the configured URL only.
        self._client = httpx.AsyncClient(
            verify=self.verify,
            follow_redirects=False,
            trust_env=False,
            timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=CONCURRENCY),
        )
        self._task = asyncio.create_task(self._run(), name="backend-api-webhook")

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Take no more deliveries; posts in flight get their share of ``deadline``, then are
        cancelled (their deliveries are free again when their lease runs out)."""
        if self._task is None:
            return
        deadline = deadline or Deadline(5.0)
        self._stopping = True
        self.queue.ring()
        await stop_task(self._task, timeout=deadline.budget(1.0), what="webhook pusher")
        self._task = None
        await finish_tasks(self._posts, timeout=deadline.budget(self.timeout_s), what="webhook posts")
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _run(self) -> None:
        lease_s = self.timeout_s + _LEASE_MARGIN_S
        while not self._stopping:
            await self._slots.acquire()
            try:
                taken = await self._next(lease_s)
            except Exception as exc:
                # The store failing: say so, and look again shortly rather than end the loop.
                self._slots.release()
                log.error("backend_api.webhook_loop_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)  # a pause before the next look at a failing store
                continue
            if taken is None:
                self._slots.release()
                continue
            post = asyncio.create_task(self._post(taken))
            self._posts.add(post)
            post.add_done_callback(self._posted)

    async def _next(self, lease_s: float) -> Taken | None:
        """The next delivery due for a post, leased to the pusher; or None after waiting for a
        change, a lease or a retry time."""
        changed = self.queue.waiter()
        now = time.time()
        taken = await self.queue.take(self.owner, now_s=now, lease_s=lease_s, push=True)
        if taken is not None:
            return taken
        due = await self.queue.next_due(now_s=now, push=True)
        wait = RECHECK_S if due is None else min(RECHECK_S, max(due - time.time(), 0.0))
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed.wait()
        return None

    def _posted(self, task: asyncio.Task[None]) -> None:
        self._posts.discard(task)
        self._slots.release()

    async def _post(self, taken: Taken) -> None:
        try:
            await self._deliver(taken)
        except Exception as exc:
            # The store failing after the post: the lease runs out and the delivery comes again.
            log.error("backend_api.webhook_post_failed", error=type(exc).__name__)

    async def _deliver(self, taken: Taken) -> None:
        try:
            delivery = self.vault.open(taken)
        except TongbanError as exc:
            await self.queue.kill(taken.delivery_id, now_s=time.time())
            log.error("backend_api.delivery_unreadable", case_no=taken.case_no, reason=exc.reason)
            return
        body = json_format.MessageToJson(delivery, indent=None, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            WebhookHeader.DELIVERY: taken.delivery_id,
            WebhookHeader.SIGNATURE: signature(self.secret, body, int(time.time())),
        }
        answer = await self._send(body, headers)
        if answer is not None and 200 <= answer < 300:
            await self.queue.ack(taken.delivery_id, now_s=time.time(), via=Via.WEBHOOK)
            self.delivered += 1
            log.info("backend_api.webhook_delivered", case_no=taken.case_no, attempt=taken.push_attempts)
            return
        await self._failed(taken, answer)

    async def _send(self, body: bytes, headers: dict[str, str]) -> int | None:
        """The answer's status code, or None when there was none (refused, timed out, TLS)."""
        assert self._client is not None
        try:
            # The answer's body is never read: a receiver cannot make us hold a large one.
            async with self._client.stream("POST", self.url, content=body, headers=headers) as resp:
                return resp.status_code
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            log.info("backend_api.webhook_unreachable", error=type(exc).__name__)
            return None

    async def _failed(self, taken: Taken, answer: int | None) -> None:
        now = time.time()
        if taken.push_attempts >= self.max_attempts:
            if await self.queue.kill(taken.delivery_id, now_s=now):
                self.dead += 1
                self.metrics.dead_lettered(taken.service_code, Reason.BACKEND_FAILURE)
                log.error(
                    "backend_api.webhook_dead_lettered",
                    case_no=taken.case_no,
                    delivery_id=taken.delivery_id,
                    attempts=taken.push_attempts,
                    status=answer,
                )
            return
        delay = jittered(self.backoff_s[min(taken.push_attempts, len(self.backoff_s)) - 1])
        await self.queue.retry_later(taken.delivery_id, self.owner, at_s=now + delay)
        log.warning(
            "backend_api.webhook_retry",
            case_no=taken.case_no,
            attempt=taken.push_attempts,
            status=answer,
            delay_s=round(delay, 3),
        )
