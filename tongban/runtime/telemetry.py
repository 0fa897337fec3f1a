"""Logging (structlog) and tracing (OpenTelemetry) set-up shared by every tongban process.

* Log lines are key-value events; every line of a request carries region, message id, trace id and
  span id (bound through contextvars and the current span), never personal data.
* One trace spans regions: the sender's W3C ``traceparent`` travels inside the signed header (and in
  a NATS header for tools), the receiver continues the trace from the signed copy.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def configure_logging(*, fmt: str = "json", level: str = "info", stream: Any = None, **static: Any) -> None:
    """Configure structlog for this process; ``static`` keys (e.g. region, role) go on every line."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    def _static(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for k, v in static.items():
            event.setdefault(k, v)
        return event

    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _static,
            add_trace_ids,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def configure_tracing(
    service_name: str,
    *,
    region: str,
    otlp_endpoint: str = "",
    otlp_ca: bytes | None = None,
    processors: list[SpanProcessor] | None = None,
) -> TracerProvider:
    """Install a tracer provider; export by OTLP/gRPC if an endpoint is given, else nowhere.

    ``https://host:port`` exports over TLS (the system's roots, or ``otlp_ca`` PEM); ``host:port``
    or ``http://host:port`` in plaintext, for a collector on the same host or in dev. Tests pass
    their own ``processors`` (e.g. a SimpleSpanProcessor over an InMemorySpanExporter).
    """
    # Without an exporter nothing would read recorded spans: sample nothing (spans still carry trace
    # ids, so logs, ledgers and traceparent headers keep their correlation) and save the CPU.
    sampler = ParentBased(ALWAYS_ON) if (otlp_endpoint or processors) else ALWAYS_OFF
    resource = Resource.create(
        {"service.name": service_name, "tongban.region": region, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource, sampler=sampler)
    for p in processors or []:
        provider.add_span_processor(p)
    if otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(otlp_endpoint, otlp_ca)))
    return provider


def _otlp_exporter(endpoint: str, ca: bytes | None) -> SpanExporter:
    """The OTLP/gRPC span exporter to ``endpoint``: TLS for ``https://`` (roots: ``ca`` PEM, or the
    system's), else plaintext."""
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter  # lazy: ~140 ms of OTLP protobufs

    tls = endpoint.startswith("https://")
    return trace_exporter.OTLPSpanExporter(
        endpoint=endpoint,
        insecure=not tls,
        credentials=grpc.ssl_channel_credentials(root_certificates=ca) if tls else None,
    )


def current_traceparent() -> str:
    """The W3C traceparent of the current span ('' when there is none)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str) -> otel_context.Context:
    """An OpenTelemetry context whose remote parent is ``traceparent``."""
    return _PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id inside a traceparent ('' if malformed)."""
    parts = traceparent.split("-")
    if len(parts) == 4 and _TRACE_ID.fullmatch(parts[1]) and parts[1] != "0" * 32:
        return parts[1]
    return ""


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def messaging_attributes(
    subject: str,
    message_id: str,
    peer_region: str,
    service_code: str,
    *,
    operation: str = "send",
    operation_type: str = "send",
) -> dict[str, str]:
    """Messaging semantic-convention attributes of a PRODUCER (``operation_type`` send) or
    CONSUMER (process) span, NATS as the system, plus tongban's own: ids and codes only, never
    personal data."""
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
        "tongban.message_id": message_id,
        "tongban.peer_region": peer_region,
        "tongban.service_code": service_code,
    }
