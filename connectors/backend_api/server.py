"""The back-end API's gRPC server: its own port, mutual TLS like the gateway's (plaintext in dev mode
only), bounded requests, health and reflection beside ``CaseBackend``.
"""

from __future__ import annotations

from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from connectors.backend_api.interceptor import SERVICE, BackendApiInterceptor
from connectors.backend_api.service import CaseBackendService
from ledger.files import write_atomically
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config
from tongban.v1 import backend_pb2_grpc

MAX_REQUEST_BYTES: Final = 64 * 1024
"""Largest request the API takes: a status report with its note and 50 missing items fits."""
_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.server_handshake_timeout_ms", 10_000),
    # Watch streams live long: ping idle connections so a case system that vanished is noticed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def mutual_tls(cfg: Config) -> bool:
    """Whether the API requires client certificates (``[backend_api] client_ca`` is set)."""
    return bool(cfg.backend_api.client_ca)


async def start_server(cfg: Config, service: CaseBackendService) -> tuple[grpc.aio.Server, int]:
    """Serve ``service`` on ``[backend_api] listen``; the started server and its port (written to
    ``port_file`` when set).

    Raises:
        ConfigError: no TLS outside dev mode, unreadable TLS files, or the address cannot be bound.
    """
    api = cfg.backend_api
    tls = mutual_tls(cfg)
    if not tls and not cfg.gateway.dev_mode:
        raise ConfigError("[backend_api] needs tls_cert, tls_key and client_ca outside dev mode")
    interceptor = BackendApiInterceptor(
        region=cfg.region.code, mutual_tls=tls, allowed_clients=api.allowed_clients
    )
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[*_OPTIONS, ("grpc.max_send_message_length", cfg.gateway.max_message_bytes)],
    )
    backend_pb2_grpc.add_CaseBackendServicer_to_server(service, server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        if tls:
            credentials = grpc.ssl_server_credentials(
                [(cfg.path(api.tls_key).read_bytes(), cfg.path(api.tls_cert).read_bytes())],
                root_certificates=cfg.path(api.client_ca).read_bytes(),
                require_client_auth=True,
            )
            port = server.add_secure_port(api.listen, credentials)
        else:
            port = server.add_insecure_port(api.listen)  # dev mode only (checked above)
    except OSError as exc:
        raise ConfigError(f"[backend_api] TLS files cannot be read: {exc.strerror or exc}") from exc
    except RuntimeError as exc:  # grpc: the address cannot be bound
        raise ConfigError(f"[backend_api] cannot listen on {api.listen}") from exc
    if not port:
        raise ConfigError(f"[backend_api] cannot listen on {api.listen}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    if api.port_file:
        write_atomically(cfg.path(api.port_file), str(port).encode())
    return server, port
