"""What every regional process (gateway, connector) loads at start: keys, registry, NATS connection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS

from tongban import subjects
from tongban.config import Config
from tongban.errors import ConfigError, Unavailable
from tongban.keys import SealingKey, SigningKey, load_sealing_key, load_signing_key
from tongban.privacy import Correlator
from tongban.registry import Registry

log = structlog.get_logger("tongban.node")


@dataclass(frozen=True)
class RegionSecrets:
    """The private material of one region: signing and sealing keys, correlation key."""

    signing: SigningKey
    sealing: SealingKey
    correlator: Correlator


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError as exc:
        raise ConfigError("root key must be 64 hex characters (raw Ed25519 public key)") from exc


def load_root_keys(cfg: Config) -> list[Ed25519PublicKey]:
    """Pinned root keys: each entry is hex, or a file that holds hex."""
    keys = []
    for item in cfg.registry.root_keys:
        p = cfg.path(item)
        keys.append(parse_public_key(p.read_text() if p.exists() else item))
    if not keys:
        raise ConfigError("[registry] root_keys is empty: a node must pin the registry authority's key")
    return keys


def load_registry(cfg: Config) -> Registry:
    return Registry.load(cfg.path(cfg.registry.file), load_root_keys(cfg))


def load_secrets(cfg: Config) -> RegionSecrets:
    region = cfg.region.code
    corr_path = cfg.path(cfg.keys.correlation_key)
    try:
        corr = bytes.fromhex(Path(corr_path).read_text().strip())
    except FileNotFoundError as exc:
        raise ConfigError(f"correlation key file {corr_path} does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"correlation key file {corr_path} must hold hex") from exc
    return RegionSecrets(
        signing=load_signing_key(cfg.path(cfg.keys.signing_key), region),
        sealing=load_sealing_key(cfg.path(cfg.keys.sealing_key), region),
        correlator=Correlator(corr),
    )


async def connect_nats(cfg: Config, *, name: str, **callbacks: Any) -> NATS:
    """Connect to the region's own nats-server with a region-specific inbox prefix.

    The first connection must succeed within ``connect_timeout_s`` (per attempt, a few attempts);
    afterwards the client reconnects forever, and the caller's health reflects the state.
    """

    async def _error_cb(exc: Exception) -> None:
        log.warning("nats.error", error=type(exc).__name__, detail=str(exc)[:200])

    async def _disconnected_cb() -> None:
        log.warning("nats.disconnected")

    async def _reconnected_cb() -> None:
        log.info("nats.reconnected")

    opts: dict[str, Any] = {
        "error_cb": _error_cb,
        "disconnected_cb": _disconnected_cb,
        "reconnected_cb": _reconnected_cb,
    }
    opts.update(callbacks)
    try:
        return await nats.connect(
            servers=cfg.nats.servers,
            name=name,
            inbox_prefix=subjects.inbox_prefix(cfg.region.code).encode(),
            connect_timeout=cfg.nats.connect_timeout_s,
            max_reconnect_attempts=cfg.nats.max_reconnect_attempts,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            **opts,
        )
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        raise Unavailable(f"cannot connect to NATS at {', '.join(cfg.nats.servers)}") from exc
