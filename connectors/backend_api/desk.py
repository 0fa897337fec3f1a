"""The case desk: the adapter of the catalogue items the region's own case system handles through the
back-end API (``[services.<code>] backend_api = true``).

The connector's case worker hands it each verified, opened Submit; the desk stores it as a delivery
(sealed, :mod:`.sealed`) in the queue (:mod:`.queue`) and answers 1 已接件 at once. The case system
takes it from there (WatchDeliveries, or the webhook) and reports the later statuses with
ReportStatus. Storing is idempotent on the request's message id: a request redelivered after a
crash between the store and the case worker's own record stores one delivery.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog

from connectors.adapters import AdapterFailure, AdapterRequest, StatusUpdate
from connectors.backend_api.queue import DeliveryQueue, Stored
from connectors.backend_api.sealed import DeliveryVault
from tongban.core import messages
from tongban.core.errors import Reason
from tongban.runtime import telemetry
from tongban.v1 import backend_pb2, exchange_pb2

log = structlog.get_logger("tongban.connector.backend_api")

RECEIVED: Final = StatusUpdate(exchange_pb2.CASE_STATUS_RECEIVED, "SJ", "", "已接件")
"""What the desk answers for every case it stores: 1 已接件 (received for the case system)."""

_KINDS: Final = {
    "person": exchange_pb2.APPLICANT_KIND_PERSON,
    "enterprise": exchange_pb2.APPLICANT_KIND_ENTERPRISE,
}


def delivery_of(request: AdapterRequest, *, received_s: float, trace_id: str) -> backend_pb2.Delivery:
    """The Delivery the case system receives for ``request`` (its attempt is set when it goes out)."""
    d = backend_pb2.Delivery(
        delivery_id=request.message_id,
        case_no=request.case_no,
        service_code=request.service_code,
        requester_region=request.requester_region,
        origin_system=request.origin_system,
        trace_id=trace_id,
        purpose=request.purpose,
    )
    d.applicant.kind = _KINDS.get(request.applicant_kind, exchange_pb2.APPLICANT_KIND_UNSPECIFIED)
    d.applicant.id_no = request.applicant_id
    d.applicant.name = request.applicant_name
    d.applicant.phone = request.applicant_phone
    d.fields.update(request.fields)
    d.received_at.CopyFrom(messages.timestamp(received_s))
    return d


class CaseDesk:
    """The CaseAdapter of the items delivered to the region's case system (the back-end API's
    adapter: :meth:`connectors.backend_api.BackendApi.adapter`).

    Args:
        queue: the delivery queue (open while the connector runs).
        vault: seals each delivery to the region's own key.
    """

    def __init__(self, queue: DeliveryQueue, vault: DeliveryVault) -> None:
        self.queue = queue
        self.vault = vault

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        """A Query has no answer here: these items are cases, handled by the case system."""
        raise AdapterFailure(
            "this item is handled as a case by the region's case system: Submit it",
            reason=Reason.SERVICE_NOT_SERVED,
        )

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        """Store the case for the case system; 1 已接件.

        Raises:
            AdapterFailure: the queue is not open or its store failed (the case worker retries).
        """
        if not self.queue.is_open:
            raise AdapterFailure("the back-end API's delivery queue is not open")
        delivery = delivery_of(request, received_s=time.time(), trace_id=telemetry.current_trace_id())
        key_id, sealed = self.vault.seal(delivery)
        try:
            first = await self.queue.store(
                Stored(
                    delivery_id=request.message_id,
                    case_no=request.case_no,
                    service_code=request.service_code,
                    received_s=messages.seconds(delivery.received_at),
                    sealed_key_id=key_id,
                    sealed=sealed,
                )
            )
        except (sqlite3.Error, RuntimeError) as exc:
            log.error("backend_api.store_failed", error=type(exc).__name__)
            raise AdapterFailure("the back-end API's delivery queue failed") from exc
        log.info("backend_api.delivery_stored", case_no=request.case_no, first=first)
        return [RECEIVED]
