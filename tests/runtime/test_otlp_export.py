"""OTLP export as configured: plaintext to ``host:port``, TLS to ``https://host:port`` (checked
against the configured CA), into a real OTLP/gRPC receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from tests.e2e.test_trace_processes import Receiver
from tests.helpers import eventually
from tongban.runtime import certs
from tongban.runtime.telemetry import configure_tracing

CA = certs.create_ca("collector test CA")
SERVER = certs.issue_server(CA, ["127.0.0.1", "localhost"])


@contextlib.asynccontextmanager
async def receiver(*, tls: bool) -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    if tls:
        creds = grpc.ssl_server_credentials([(SERVER.key_pem, SERVER.cert_pem)])
        endpoint = f"https://localhost:{server.add_secure_port('127.0.0.1:0', creds)}"
    else:
        endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield rec, endpoint
    finally:
        await server.stop(0)


async def one_span(provider: TracerProvider) -> str:
    """Record one span and flush; the exporter's blocking call runs off the loop the receiver uses."""
    with provider.get_tracer("t").start_as_current_span("gateway.validate") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    await asyncio.to_thread(provider.force_flush, 3000)
    return trace_id


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_spans_reach_the_collector(tls: bool) -> None:
    async with receiver(tls=tls) as (rec, endpoint):
        provider = configure_tracing(
            "tongban-gateway", region="440300", otlp_endpoint=endpoint, otlp_ca=CA.cert_pem
        )
        try:
            trace_id = await one_span(provider)
            await eventually(lambda: [s.name for s in rec.of_trace(trace_id)] == ["gateway.validate"])
            assert rec.of_trace(trace_id)[0].region == "440300"
        finally:
            await asyncio.to_thread(provider.shutdown)


async def test_a_collector_whose_certificate_does_not_check_out_gets_nothing() -> None:
    async with receiver(tls=True) as (rec, endpoint):
        provider = configure_tracing(
            "tongban-gateway",
            region="440300",
            otlp_endpoint=endpoint,
            otlp_ca=certs.create_ca("another CA").cert_pem,
        )
        try:
            await one_span(provider)
            assert rec.spans == []
        finally:
            await asyncio.to_thread(provider.shutdown)
