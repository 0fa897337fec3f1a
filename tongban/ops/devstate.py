"""A development trust domain on disk: root key, region keys, signed registry, node configs.

``tongban dev`` and the tests build their stacks from this, so both run the same files a real
deployment would: PEM keys, a root-signed registry document, a TOML config per region.

Layout of the state directory::

    root.key / root.pub            registry authority (dev only: a real root key never sits beside nodes)
    registry.signed                the signed TrustRegistry
    <region>/keys/{signing,sealing}.pem, correlation.key
    <region>/node.toml             config shared by the region's gateway and connector
    <region>/ledger.sqlite         the region's ledger
    <region>/demo-backend.sqlite   demo back ends
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.files import write_atomically
from tongban.core import identifiers
from tongban.core.catalogue import Catalogue
from tongban.core.keys import (
    SEALING_ALGORITHM,
    SIGNING_ALGORITHM,
    SealingKey,
    SigningKey,
    load_sealing_key,
    load_signing_key,
    raw_public,
)
from tongban.core.messages import timestamp
from tongban.core.registry import sign_registry
from tongban.runtime.config import dump_toml
from tongban.runtime.keyfiles import save_sealing_key, save_signing_key
from tongban.runtime.natsroles import NatsRole
from tongban.v1 import registry_pb2

DEV_REGIONS: Mapping[str, str] = {"440300": "深圳市", "320200": "无锡市"}
DEV_SYSTEM = "dev-partner"


@dataclass(frozen=True)
class DevState:
    root: Path
    regions: tuple[str, ...]

    def config_path(self, region: str) -> Path:
        return self.root / region / "node.toml"

    def ledger_path(self, region: str) -> Path:
        return self.root / region / "ledger.sqlite"

    def port_file(self, region: str) -> Path:
        return self.root / region / "gateway.port"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    write_atomically(path, text.encode(), mode=mode)


def _root_key(root: Path) -> Ed25519PrivateKey:
    p = root / "root.key"
    if p.exists():
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(p, pem.decode(), 0o600)
    _write(root / "root.pub", raw_public(key.public_key()).hex() + "\n")
    return key


def _region_keys(root: Path, region: str) -> tuple[SigningKey, SealingKey]:
    kdir = root / region / "keys"
    sp, kp, cp = kdir / "signing.pem", kdir / "sealing.pem", kdir / "correlation.key"
    if not sp.exists():
        save_signing_key(sp, SigningKey.generate(region))
    if not kp.exists():
        save_sealing_key(kp, SealingKey.generate(region))
    if not cp.exists():
        _write(cp, secrets.token_hex(32) + "\n", 0o600)
    return load_signing_key(sp, region), load_sealing_key(kp, region)


def build_registry(
    regions: Mapping[str, tuple[SigningKey, SealingKey]],
    services: Iterable[str],
    *,
    version: int,
    names: Mapping[str, str] | None = None,
    valid_for_s: float = 365 * 86400,
    gateway_addresses: Mapping[str, str] | None = None,
) -> registry_pb2.TrustRegistry:
    """A registry in which every region provides ``services`` and every region may call every other;
    ``gateway_addresses`` (host:port by region) tell tools such as ``tongban trace`` where each
    region's gateway listens."""
    now = time.time()
    svc = sorted(services)
    doc = registry_pb2.TrustRegistry(version=version, issued_at=timestamp(now))
    for code, (sig, kem) in regions.items():
        region = doc.regions.add(
            code=code,
            name=(names or {}).get(code) or identifiers.KNOWN_REGIONS.get(code, code),
            gateway_address=(gateway_addresses or {}).get(code, ""),
            provided_services=svc,
        )
        for kid, use, alg, pub in (
            (sig.key_id, registry_pb2.KEY_USE_SIGNING, SIGNING_ALGORITHM, sig.public_raw),
            (kem.key_id, registry_pb2.KEY_USE_SEALING, SEALING_ALGORITHM, kem.public_raw),
        ):
            region.keys.add(
                key_id=kid,
                use=use,
                algorithm=alg,
                public_key=pub,
                not_before=timestamp(now - 3600),
                not_after=timestamp(now + valid_for_s),
            )
    for caller in regions:
        for provider in regions:
            doc.access_rules.add(
                caller_region=caller, caller_system="*", service_code="*", provider_region=provider
            )
    return doc


def init_state(
    root: Path,
    regions: Mapping[str, str] = DEV_REGIONS,
    *,
    nats_urls: Mapping[str, str] | None = None,
    nats_seeds: Mapping[str, Mapping[NatsRole, Path]] | None = None,
    catalogue: Catalogue | None = None,
    log_format: str = "json",
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    gateway_ports: Mapping[str, int] | None = None,
) -> DevState:
    """Create (or refresh) a dev trust domain under ``root``.

    Keys are kept across calls; the registry is re-signed with a higher version each time, and the
    configs are rewritten (NATS ports change from run to run).

    ``nats_seeds`` names, per region, the NKey seed file of each process role on the region's
    nats-server (``Topology.client_seeds()``); the configs point ``[nats] <role>_nkey_seed`` at them.
    A region without seeds gets none, and its processes refuse to start (no anonymous NATS client).

    A region given a port in ``gateway_ports`` has its gateway listen on ``127.0.0.1:<port>``, and
    the registry names that address as its ``gateway_address``; the others listen on port 0 (the
    port file says which) and the registry names no address.
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    cat = catalogue or Catalogue.load()
    root_key = _root_key(root)
    keys = {code: _region_keys(root, code) for code in regions}
    reg_path = root / "registry.signed"
    version = int(time.time() * 1000)
    addresses = {code: f"127.0.0.1:{port}" for code, port in (gateway_ports or {}).items() if code in regions}
    doc = build_registry(keys, cat.codes(), version=version, names=regions, gateway_addresses=addresses)
    write_atomically(reg_path, sign_registry(doc, root_key))
    for code, name in regions.items():
        cfg: dict[str, dict[str, Any]] = {
            "region": {"code": code, "name": name},
            "nats": {
                "servers": [(nats_urls or {}).get(code, "nats://127.0.0.1:4222")],
                **{
                    f"{role.value}_nkey_seed": str(seed)
                    for role, seed in (nats_seeds or {}).get(code, {}).items()
                },
            },
            "keys": {
                "signing_key": "keys/signing.pem",
                "sealing_key": "keys/sealing.pem",
                "correlation_key": "keys/correlation.key",
                # One machine: the registry reaches every region at once.
                "activation_delay_s": 0.5,
            },
            "registry": {"file": "../registry.signed", "root_keys": ["../root.pub"]},
            "gateway": {
                "listen": addresses.get(code, "127.0.0.1:0"),
                "port_file": "gateway.port",
                "dev_mode": True,
                "system_id": DEV_SYSTEM,
            },
            "connector": {"adapters": "demo", "demo_db": "demo-backend.sqlite"},
            "ledger": {"path": "ledger.sqlite"},
            "log": {"format": log_format, "level": "info"},
            # /metrics, /livez, /readyz of each process on a free loopback port (port files).
            "metrics": {
                "gateway_listen": "127.0.0.1:0",
                "gateway_port_file": "gateway-metrics.port",
                "connector_listen": "127.0.0.1:0",
                "connector_port_file": "connector-metrics.port",
            },
        }
        for section, values in (extra or {}).items():
            cfg.setdefault(section, {}).update(values)
        _write(root / code / "node.toml", dump_toml(cfg))
    return DevState(root, tuple(regions))
