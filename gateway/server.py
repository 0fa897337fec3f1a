"""The regional gateway process: grpc.aio server with Exchange, Ledger, CatalogueService, health and
reflection."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS

from gateway.case_desk import CaseDesk
from gateway.cases import CaseStore
from gateway.catalogue_service import CatalogueService
from gateway.checkpoints import CheckpointPublisher
from gateway.exchange import ExchangeCore
from gateway.exchange_service import ExchangeService
from gateway.interceptors import GatewayInterceptor
from gateway.ledger_service import LedgerService
from gateway.peer_ledger import fetch_entries
from gateway.ratelimit import ConcurrencyLimits, PartnerLimiter
from gateway.reach import PeerReach
from gateway.witness import Witness
from ledger.files import write_atomically
from ledger.tree import LedgerTree
from tongban.core.errors import ConfigError
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import GatewayConfig
from tongban.runtime.live_catalogue import CatalogueWatcher, catalogue_watcher
from tongban.runtime.live_registry import RegistryWatcher
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats, registry_watcher
from tongban.runtime.shutdown import Deadline, stop_task, within
from tongban.v1 import (
    catalogue_pb2,
    catalogue_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)

log = structlog.get_logger("tongban.gateway")
EXCHANGE = exchange_pb2.DESCRIPTOR.services_by_name["Exchange"].full_name
LEDGER = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name
CATALOGUE = catalogue_pb2.DESCRIPTOR.services_by_name["CatalogueService"].full_name
LIVENESS = "tongban.liveness"
"""Health service name that is SERVING while the process serves at all (a liveness probe's)."""
_PART_STOP_S = 3.0
"""Bound of each part's stop after the RPCs (case desk, case store, witness, checkpoints, watch)."""
CROSS_REGION = "tongban.cross_region"
"""Health service name that is SERVING while Exchange is and some peer region answers through the
hub: what a Query (an answer now from another region) needs beyond what Submit needs."""


def connection_options(gw: GatewayConfig) -> list[tuple[str, int]]:
    """gRPC core channel arguments of the server's connection policy (names: grpc_types.h)."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        ("grpc.server_handshake_timeout_ms", ms(gw.handshake_timeout_s)),
        ("grpc.max_connection_idle_ms", ms(gw.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(gw.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(gw.max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", ms(gw.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(gw.keepalive_timeout_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(gw.min_client_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", int(gw.permit_keepalive_without_calls)),
        ("grpc.http2.max_ping_strikes", gw.max_ping_strikes),
    ]


class Gateway:
    """One gateway process of a region. ``async with Gateway(...)`` starts and stops it.

    Health: the overall and Exchange statuses are SERVING only once NATS is connected, and go
    NOT_SERVING while the NATS connection is down. ``tongban.cross_region`` also needs a peer
    region to answer through the hub (Submit does not: it stores and forwards).

    Args:
        parts: what the process loaded (:func:`~tongban.runtime.component.run_component`).
        nc: a NATS connection to use (and leave open); None: the gateway connects, and drains its
            connection when it stops.
    """

    def __init__(self, parts: ComponentParts, nc: NATS | None = None) -> None:
        cfg = parts.cfg
        if not cfg.gateway.dev_mode and not cfg.gateway.client_ca:
            raise ConfigError(
                "outside dev mode partners authenticate with client certificates: set [gateway] tls_cert, "
                "tls_key and client_ca (`tongban certs` makes a development set), or dev_mode = true"
            )
        self.parts = parts
        self.cfg = cfg
        self.registry = parts.registry
        self.secrets = parts.secrets
        self.ledger = parts.ledger
        self.nc = nc
        self.trust: RegistryWatcher | None = None
        self.catalogue_watch: CatalogueWatcher | None = None
        """Follows the region's catalogue bucket (``[catalogue] watch``) while NATS is up."""
        self.ledger_tree = LedgerTree()
        self.publisher: CheckpointPublisher | None = None
        self.witness: Witness | None = None
        self._owns_nc = nc is None
        self.tracer = parts.tracer
        self.metrics = parts.metrics
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.cases: CaseStore | None = None
        self.desk: CaseDesk | None = None
        self.port = 0
        self.maintenance = False
        """While the maintenance file exists: NOT_SERVING, new calls refused, in-flight ones finish."""
        self._nats_up = False
        self._ledger_ok = True
        self._last_readiness: dict[str, bool] | None = None
        self._health_lock = asyncio.Lock()
        self._health_task: asyncio.Task[None] | None = None
        self.reach: PeerReach | None = None
        """Peer regions answering through the hub, probed while the gateway serves."""
        self.interceptor: GatewayInterceptor | None = None
        """The server's interceptor once started (its ``calls`` count what is in flight)."""
        self.metrics.observe(peers_reachable=self._peers_reachable)

    def readiness(self) -> dict[str, bool]:
        """What must hold for Exchange to serve; all True means ready (gRPC health, ``/readyz``)."""
        return {
            "started": self.server is not None,
            "nats": self._nats_up,
            "ledger": self._ledger_ok,
            "registry": self.secrets.signing_key_usable(),
            "not_in_maintenance": not self.maintenance,
        }

    def cross_region(self) -> bool:
        """Whether Query can be answered now: ready, and some peer region answers through the hub."""
        return all(self.readiness().values()) and self.reach is not None and self.reach.any

    def informational(self) -> Mapping[str, bool]:
        """Shown beside the readiness checks (``/readyz``) without failing readiness: Submit works
        while the hub is down."""
        return {"cross_region": self.cross_region()}

    def _peers_reachable(self) -> Mapping[str, bool]:
        return self.reach.reachable if self.reach is not None else {}

    async def _set_health(self, nats_up: bool | None = None) -> None:
        """Per service: Exchange (and "", what a load balancer asks) SERVING only when every
        readiness condition holds; Ledger needs only the ledger (auditors read it while NATS is
        down); LIVENESS while the server runs (a restart would not help a NOT_SERVING Exchange)."""
        if nats_up is not None:
            self._nats_up = nats_up
        # Serialised, and the snapshot taken inside: a disconnect callback running between the
        # awaits below cannot leave an older snapshot as the last word.
        async with self._health_lock:
            ready = self.readiness()
            if ready != self._last_readiness:
                if self._last_readiness is not None:
                    # A warning while serving; a stop going NOT_SERVING is routine.
                    emit = log.warning if ready["started"] else log.info
                    emit("gateway.readiness", region=self.cfg.region.code, **ready)
                self._last_readiness = ready
            up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set("", up if all(ready.values()) else down)
            await self.health.set(EXCHANGE, up if all(ready.values()) else down)
            await self.health.set(LEDGER, up if ready["started"] and ready["ledger"] else down)
            await self.health.set(LIVENESS, up if ready["started"] else down)
            await self.health.set(CROSS_REGION, up if self.cross_region() else down)

    async def start(self) -> None:
        if self.server is not None:
            return
        gw = self.cfg.gateway
        await self._set_health(False)
        try:
            nc = await self._connect_and_watch()
        except BaseException:
            await self._release()
            raise
        core = ExchangeCore(self.parts, nc)
        self.interceptor = GatewayInterceptor(
            region=self.cfg.region.code,
            dev_mode=gw.dev_mode,
            dev_system_id=gw.system_id,
            tracer=self.tracer,
            limiter=PartnerLimiter(gw.rate_per_partner_s, gw.burst_per_partner),
            dev_tokens=gw.dev_tokens,
            limits=ConcurrencyLimits(
                per_connection=gw.max_in_flight_per_connection,
                unary_per_partner=gw.max_in_flight_per_partner,
                streams_per_partner=gw.max_streams_per_partner,
                total=gw.max_concurrent_rpcs,
            ),
            maintenance=lambda: self.maintenance,
            metrics=self.metrics,
        )
        server = grpc.aio.server(
            interceptors=[self.interceptor],
            # No maximum_concurrent_rpcs: gRPC's cap counts health checks too, so partners filling
            # it took the gateway out of its load balancer; the interceptor bounds calls instead.
            options=[
                ("grpc.max_receive_message_length", gw.max_message_bytes),
                ("grpc.max_send_message_length", gw.max_message_bytes),
                ("grpc.so_reuseport", 0),
                *connection_options(gw),
            ],
        )
        try:
            self.cases = CaseStore(self.cfg.path(gw.case_store))
            await self.cases.open()
            core.receipts = self.cases
            self.desk = CaseDesk(core, self.cases, nc)
            await self.desk.start()
            exchange_pb2_grpc.add_ExchangeServicer_to_server(ExchangeService(core, self.desk), server)
            ledger_pb2_grpc.add_LedgerServicer_to_server(
                LedgerService(
                    self.ledger,
                    self.ledger_tree,
                    self.latest_checkpoint,
                    case_lookup=self.cases.get,
                    peer_reader=functools.partial(fetch_entries, nc),
                ),
                server,
            )
            catalogue_pb2_grpc.add_CatalogueServiceServicer_to_server(
                CatalogueService(self.parts.catalogue, self.registry, self.secrets.correlator), server
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(
                (
                    EXCHANGE,
                    LEDGER,
                    CATALOGUE,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
            if gw.client_ca:
                # Mutual TLS: no client certificate from the partner CA, no connection.
                credentials = grpc.ssl_server_credentials(
                    [(self.cfg.path(gw.tls_key).read_bytes(), self.cfg.path(gw.tls_cert).read_bytes())],
                    root_certificates=self.cfg.path(gw.client_ca).read_bytes(),
                    require_client_auth=True,
                )
                self.port = server.add_secure_port(gw.listen, credentials)
            else:
                self.port = server.add_insecure_port(gw.listen)  # dev mode only (checked in __init__)
            if not self.port:
                raise ConfigError(f"cannot listen on {gw.listen}")
            await server.start()
        except BaseException:
            await self._release()  # nothing half-started stays behind: loops, store thread, watcher, NATS
            raise
        self.server = server
        self.reach = PeerReach(self.cfg.region.code, nc, self.registry, timeout_s=gw.peer_probe_timeout_s)
        await self._set_health(nc.is_connected)
        self._health_task = asyncio.create_task(self._watch_health(), name="gateway-health")
        if gw.port_file:
            write_atomically(self.cfg.path(gw.port_file), str(self.port).encode())
        log.info(
            "gateway.started",
            region=self.cfg.region.code,
            port=self.port,
            dev_mode=gw.dev_mode,
            mutual_tls=bool(gw.client_ca),
        )

    async def _watch_health(self) -> None:
        """The health watches, ended together when the gateway stops (the task is cancelled)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_local(), name="gateway-health-local")
            tg.create_task(self._watch_peers(), name="gateway-health-peers")

    async def _watch_peers(self) -> None:
        """Ping the peer regions through the hub; on a change, say so and update health."""
        interval = self.cfg.gateway.peer_probe_interval_s
        while self.server is not None:  # stop() clears it first: the loop ends even if a cancel is lost
            reach = self.reach
            try:
                if reach is not None and await reach.probe():
                    up = sorted(r for r, ok in reach.reachable.items() if ok)
                    emit = log.info if up else log.warning
                    emit("gateway.peers", region=self.cfg.region.code, reachable=up, cross_region=bool(up))
                    await self._set_health()
            except Exception as exc:
                log.error("gateway.peer_probe_failed", error=type(exc).__name__)
            await asyncio.sleep(interval)  # periodic probes: there is no event to wait on

    async def _watch_local(self) -> None:
        """Follow the maintenance file (``tongban maintenance on|off``: a load balancer watching
        health moves traffic away, and what is in flight finishes), probe the ledger, and re-check
        the signing key's validity (time passes, keys get revoked)."""
        path = self.cfg.path(self.cfg.gateway.maintenance_file)
        poll = self.cfg.gateway.maintenance_poll_s
        while self.server is not None:
            try:
                on = path.exists()
                if on != self.maintenance:
                    self.maintenance = on
                    log.warning("gateway.maintenance", region=self.cfg.region.code, on=on)
                try:
                    async with asyncio.timeout(max(poll, 1.0)):
                        await self.ledger.size()
                    self._ledger_ok = True
                except Exception as exc:
                    if self._ledger_ok:
                        log.error("gateway.ledger_unavailable", error=type(exc).__name__)
                    self._ledger_ok = False
                await self._set_health()
            except Exception as exc:
                # A bug here must not freeze health (and maintenance) at its last value: say so,
                # and look again at the next poll.
                log.error("gateway.health_check_failed", error=type(exc).__name__)
            await asyncio.sleep(poll)  # polling a file and probes: no event to wait on

    def latest_checkpoint(self) -> tuple[bytes, int, bytes] | None:
        """(signed note, size, root) of the region's latest checkpoint, once one is signed."""
        last = self.publisher.signer.last if self.publisher is not None else None
        return None if last is None else (last.note, last.checkpoint.size, last.checkpoint.root)

    async def _stop_background(self, deadline: Deadline) -> None:
        """The NATS-side parts started with the connection: witness, checkpoints, registry and
        catalogue watches; each within its share of ``deadline``."""
        if self.witness is not None:
            await within(self.witness.stop(), timeout=deadline.budget(_PART_STOP_S), what="witness")
            self.witness = None
        if self.publisher is not None:
            await within(self.publisher.stop(), timeout=deadline.budget(_PART_STOP_S), what="checkpoints")
            self.publisher = None
        if self.trust is not None:
            await within(self.trust.stop(), timeout=deadline.budget(_PART_STOP_S), what="registry watch")
            self.trust = None
        if self.catalogue_watch is not None:
            await within(
                self.catalogue_watch.stop(), timeout=deadline.budget(_PART_STOP_S), what="catalogue watch"
            )
            self.catalogue_watch = None

    async def _connect_and_watch(self) -> NATS:
        if self.nc is None:

            async def _down() -> None:
                log.warning("nats.disconnected")
                await self._set_health(False)

            async def _up() -> None:
                log.info("nats.reconnected")
                await self._set_health(True)

            self.nc = await connect_nats(
                self.cfg,
                role=NatsRole.GATEWAY,
                name=f"tongban-gateway-{self.cfg.region.code}",
                disconnected_cb=_down,
                reconnected_cb=_up,
            )
        if self.cfg.registry.watch and self.trust is None:
            self.trust = registry_watcher(self.cfg, self.registry, self.nc, self.secrets)
            await self.trust.start()
        if self.cfg.catalogue.watch and self.catalogue_watch is None:
            self.catalogue_watch = catalogue_watcher(self.cfg, self.parts.catalogue, self.nc)
            await self.catalogue_watch.start()
        lc, region = self.cfg.ledger, self.cfg.region.code
        if self.publisher is None:
            self.publisher = CheckpointPublisher(
                region,
                self.nc,
                self.ledger,
                self.registry,
                self.secrets,
                state_path=self.cfg.path(lc.checkpoint_state),
                interval_s=lc.checkpoint_interval_s,
                tree=self.ledger_tree,
            )
            await self.publisher.start()
        if lc.witness and self.witness is None:
            self.witness = Witness(
                region, self.nc, self.ledger, self.registry, state_path=self.cfg.path(lc.witness_state)
            )
            await self.witness.start()
        return self.nc

    async def _release(self) -> None:
        """Undo a start that failed half-way."""
        deadline = Deadline(self.cfg.process.grace_s)
        await self._close_desk(deadline)
        await self._stop_background(deadline)
        await self._close_nats(deadline)

    async def _close_desk(self, deadline: Deadline) -> None:
        if self.desk is not None:
            await within(self.desk.stop(deadline), timeout=deadline.budget(_PART_STOP_S), what="case desk")
            self.desk = None
        if self.cases is not None:
            await within(self.cases.close(), timeout=deadline.budget(_PART_STOP_S), what="case store")
            self.cases = None

    async def _close_nats(self, deadline: Deadline) -> None:
        """Drain our own connection (its subscriptions' pending messages handled, its buffer
        flushed) within ``[nats] drain_timeout_s`` and the deadline; close it if that overran."""
        nc, self.nc = self.nc, None
        if not self._owns_nc or nc is None:
            self.nc = nc
            return
        budget = deadline.budget(self.cfg.nats.drain_timeout_s)
        if not await within(nc.drain(), timeout=budget, what="nats drain") and not nc.is_closed:
            await within(nc.close(), timeout=deadline.budget(1.0), what="nats close")

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Graceful and bounded: NOT_SERVING first, in-flight RPCs finish within ``[gateway]
        grace_s`` (at most half of what is left of ``deadline``, the rest is for what follows),
        then the case desk, the NATS-side parts and the connection, each within its share.

        Args:
            deadline: the whole stop's (the process's, from SIGTERM); by default ``[process]
                grace_s`` from now.
        """
        server, self.server = self.server, None
        if server is None:
            return
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        task, self._health_task = self._health_task, None
        await stop_task(task, timeout=deadline.budget(1.0), what="gateway health")
        await within(self._set_health(False), timeout=deadline.budget(1.0), what="health")
        if self.desk is not None:
            self.desk.begin_stop()
        grace = min(self.cfg.gateway.grace_s, deadline.remaining() / 2)
        # grpc cancels what is still running after the grace; the margin is for that.
        await within(server.stop(grace), timeout=grace + 1.0, what="grpc server")
        await self._close_desk(deadline)
        await self._stop_background(deadline)
        await self._close_nats(deadline)
        log.info("gateway.stopped", region=self.cfg.region.code, overran=deadline.remaining() == 0)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
