"""The back-end API of one connector, as a whole: the delivery queue, the case desk (the adapter of
the items routed to the region's case system), the gRPC server and the webhook pusher.

Built before the connector (its desk is one of the connector's adapters), started and stopped by
it (:class:`connectors.runtime.Connector`): the queue opens before the case worker takes its first
request, and closes after the worker stopped.
"""

from __future__ import annotations

from typing import Final

import grpc
import structlog

from connectors.backend_api.desk import CaseDesk
from connectors.backend_api.queue import DeliveryQueue
from connectors.backend_api.sealed import DeliveryVault, SealingKeys
from connectors.backend_api.server import mutual_tls, start_server
from connectors.backend_api.service import CaseBackendService, Reporter
from connectors.backend_api.webhook import WebhookPusher
from tongban.core.catalogue import Catalogue
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import Config
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.shutdown import Deadline, within

log = structlog.get_logger("tongban.connector.backend_api")

_GRACE_S: Final = 2.0
"""How long calls in flight get when the API stops (streams end at once on their own)."""


class BackendApi:
    """The connector's back-end API. ``start(report)``/``stop()``, idempotent.

    Construction checks the webhook settings (URL, secret file) and opens nothing.

    Args:
        cfg: the connector's config (``[backend_api]``).
        secrets: the region's sealing keys (deliveries are sealed to them at rest).
        catalogue: the items watchers may filter on.
        metrics: the connector's (dead-lettered deliveries are counted).

    Raises:
        ConfigError: a bad webhook URL or secret file.
    """

    def __init__(
        self, cfg: Config, *, secrets: SealingKeys, catalogue: Catalogue, metrics: Metrics = NO_METRICS
    ) -> None:
        self.cfg = cfg
        self.catalogue = catalogue
        self.queue = DeliveryQueue(cfg.path(cfg.backend_api.store))
        self.vault = DeliveryVault(secrets)
        self.desk = CaseDesk(self.queue, self.vault)
        self.pusher = (
            WebhookPusher(cfg, self.queue, self.vault, metrics=metrics)
            if cfg.backend_api.webhook_url
            else None
        )
        self.service: CaseBackendService | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        """The API's port once serving (0: not serving)."""
        self._started = False

    @classmethod
    def from_parts(cls, parts: ComponentParts) -> BackendApi:
        """The back-end API of the connector ``parts`` make."""
        return cls(parts.cfg, secrets=parts.secrets, catalogue=parts.catalogue, metrics=parts.metrics)

    @staticmethod
    def configured(cfg: Config) -> bool:
        """Whether ``cfg`` serves the API or pushes to a webhook."""
        return bool(cfg.backend_api.listen or cfg.backend_api.webhook_url)

    def adapter(self) -> CaseDesk:
        """The adapter of the catalogue items the region's case system handles (``[services.<code>]
        backend_api = true``): one object for all of them."""
        return self.desk

    async def start(self, report: Reporter) -> None:
        """Open the queue, then serve ``[backend_api] listen`` and push to ``webhook_url`` (each
        when set). ``report`` sends a case's later statuses (the case worker's)."""
        if self._started:
            return
        self._started = True
        api = self.cfg.backend_api
        try:
            await self.queue.open()
            if api.listen:
                self.service = CaseBackendService(
                    self.queue, self.vault, report, self.catalogue, lease_s=api.lease_s
                )
                self.server, self.port = await start_server(self.cfg, self.service)
            if self.pusher is not None:
                await self.pusher.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "backend_api.started",
            region=self.cfg.region.code,
            port=self.port,
            mutual_tls=mutual_tls(self.cfg),
            webhook=self.pusher is not None,
        )

    async def stop(self, deadline: Deadline | None = None) -> None:
        """End the streams, let calls in flight finish within their share of ``deadline`` (by
        default ``[process] grace_s`` from now), stop the webhook, close the queue."""
        if not self._started:
            return
        self._started = False
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        if self.service is not None:
            self.service.begin_stop()
        if self.server is not None:
            server, self.server = self.server, None
            await within(
                server.stop(deadline.budget(_GRACE_S)),
                timeout=deadline.budget(_GRACE_S + 1),
                what="backend API",
            )
        if self.service is not None:
            await self.service.finish(deadline)
            self.service = None
        if self.pusher is not None:
            await within(
                self.pusher.stop(deadline), timeout=deadline.budget(self.pusher.timeout_s + 1), what="webhook"
            )
        await within(self.queue.close(), timeout=deadline.budget(2.0), what="delivery queue")
        self.port = 0
        log.info("backend_api.stopped", region=self.cfg.region.code)
