"""The back-end API: how the region's own case system (一网通办) takes the cases other regions
submitted, and reports their later statuses (docs/backend-api.md).

A connector routes the catalogue items its config marks ``backend_api = true`` to the case desk
(:meth:`BackendApi.adapter`): each case is stored, sealed, in a durable delivery queue, and answered
1 已接件. The case system takes it over gRPC (``CaseBackend.WatchDeliveries`` + ``AckDelivery``,
mutual TLS, its own port) and/or receives it on a signed webhook, then reports statuses such as
补正 6 (with the missing items) and 办结 11 with ``ReportStatus``; the connector signs each and sends
it back to the submitting region.
"""

from connectors.backend_api.api import BackendApi
from connectors.backend_api.desk import CaseDesk
from connectors.backend_api.queue import DeliveryQueue, Row, State
from connectors.backend_api.webhook import WebhookHeader, signature, verify_signature

__all__ = [
    "BackendApi",
    "CaseDesk",
    "DeliveryQueue",
    "Row",
    "State",
    "WebhookHeader",
    "signature",
    "verify_signature",
]
