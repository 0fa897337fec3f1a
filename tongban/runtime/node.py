"""What every regional process (gateway, connector) loads at start: keys, registry, NATS connection."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS

from tongban.core import subjects
from tongban.core.envelope import EnvelopeRejected, Reason
from tongban.core.errors import ConfigError, Unavailable
from tongban.core.keys import SealingKey, SigningKey, load_sealing_key, load_signing_key
from tongban.core.privacy import Correlator
from tongban.core.registry import Registry
from tongban.runtime import natsroles
from tongban.runtime.config import Config
from tongban.runtime.keyfiles import key_family
from tongban.runtime.live_registry import RegistryWatcher, load_newest
from tongban.runtime.natsroles import NatsRole
from tongban.v1 import registry_pb2

log = structlog.get_logger("tongban.runtime.node")


class RegionSecrets:
    """The private material of one region: signing and sealing keys, correlation key.

    During a key rotation a region holds two keys of a use: the files ``signing*.pem`` and
    ``sealing*.pem`` beside the configured ones. Once attached to the live trust registry
    (:meth:`refresh`), it signs with its newest signing key the registry lists as valid *and* has
    listed for ``activation_delay_s`` — time for the registry to reach every other region before
    they see the new key (until then, or if no key is that old, the newest valid one). The choice is
    re-made whenever the registry's version changes or a waiting key's time comes. It opens bodies
    sealed to any sealing key it holds, re-reading the key files when a peer names one it does not
    know yet (a peer may learn the new key first).
    """

    def __init__(
        self,
        signing: list[SigningKey],
        sealing: list[SealingKey],
        correlator: Correlator,
        *,
        region: str = "",
        key_files: tuple[Path, Path] | None = None,
        activation_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not signing or not sealing:
            raise ConfigError("a region needs a signing key and a sealing key")
        self.correlator = correlator
        self.region = region
        self.activation_delay_s = activation_delay_s
        self._clock = clock
        self._key_files = key_files
        self._signing = {k.key_id: k for k in signing}
        self._sealing = {k.key_id: k for k in sealing}
        self._signer = signing[0]
        self._registry: Registry | None = None
        self._selected_version = -1
        self._reselect_at = float("inf")
        self._files_read_at = 0.0

    @property
    def signing(self) -> SigningKey:
        """The key to sign with now."""
        reg = self._registry
        if reg is not None and (reg.version != self._selected_version or self._clock() >= self._reselect_at):
            self._select(reg)
        return self._signer

    @property
    def sealing(self) -> SealingKey:
        """The sealing key peers seal to now (the registry's newest valid one we hold)."""
        if self._registry is not None:
            try:
                kid, _ = self._registry.sealing_key_for(self.region)
            except EnvelopeRejected:
                kid = ""
            if kid in self._sealing:
                return self._sealing[kid]
        return next(iter(self._sealing.values()))

    def signing_key_usable(self) -> bool:
        """Whether peers would accept our signature now: the key we sign with is in the registry,
        not revoked and inside its validity period (a node that fails this is not ready)."""
        key = self.signing
        info = self._registry.keys.get(key.key_id) if self._registry is not None else None
        if info is None:
            return False
        try:
            info.check_valid(self._clock())
        except EnvelopeRejected:
            return False
        return True

    def sealing_for(self, key_id: str) -> SealingKey:
        """Our sealing key ``key_id``; refuses a body sealed for a key we do not hold."""
        key = self._sealing.get(key_id)
        if key is None and time.monotonic() - self._files_read_at > _FILE_REREAD_S:
            self._read_files()  # a new key file may be there already
            key = self._sealing.get(key_id)
        if key is None:
            raise EnvelopeRejected(
                "body is sealed for a key this region does not hold", reason=Reason.SEALED_FOR_ANOTHER_KEY
            )
        return key

    def refresh(self, registry: Registry) -> None:
        """Re-read the key files and follow ``registry`` (the live object) from now on."""
        self._read_files()
        self._registry = registry
        self._select(registry)

    def _read_files(self) -> None:
        self._files_read_at = time.monotonic()
        if self._key_files is None:
            return
        sig_path, kem_path = self._key_files
        for sk in key_family(sig_path, self.region, load_signing_key):
            self._signing.setdefault(sk.key_id, sk)
        for kk in key_family(kem_path, self.region, load_sealing_key):
            self._sealing.setdefault(kk.key_id, kk)

    def _select(self, registry: Registry) -> None:
        now = self._clock()
        valid = []
        for info in registry.keys_of(self.region, registry_pb2.KEY_USE_SIGNING):
            if info.key_id not in self._signing:
                continue
            try:
                info.check_valid(now)
            except EnvelopeRejected:
                continue
            valid.append(info)
        active = [k for k in valid if now >= k.not_before_s + self.activation_delay_s]
        pool = active or valid
        chosen = max(pool, key=lambda k: k.not_before_s) if pool else None
        # When to look again: a waiting key becomes active, or the chosen one expires.
        times = [k.not_before_s + self.activation_delay_s for k in valid if k not in active]
        if chosen is not None and chosen.not_after_s:
            times.append(chosen.not_after_s)
        self._reselect_at = min(times, default=float("inf"))
        self._selected_version = registry.version
        if chosen is not None and chosen.key_id != self._signer.key_id:
            log.info(
                "keys.signing_key_selected", region=self.region, key_id=chosen.key_id, was=self._signer.key_id
            )
            self._signer = self._signing[chosen.key_id]


_FILE_REREAD_S = 5.0
"""At most this often, a body sealed to an unknown key of ours makes us look for new key files."""


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


def registry_cache(cfg: Config) -> Path | None:
    return cfg.path(cfg.registry.cache) if cfg.registry.cache else None


def load_registry(cfg: Config) -> Registry:
    """The registry file, or the newer one this node adopted and cached while running."""
    return load_newest(cfg.path(cfg.registry.file), registry_cache(cfg), load_root_keys(cfg))


def registry_watcher(cfg: Config, registry: Registry, nc: NATS, secrets: RegionSecrets) -> RegistryWatcher:
    """The watcher that keeps ``registry`` (and the keys ``secrets`` signs with) current."""
    return RegistryWatcher(
        registry,
        load_root_keys(cfg),
        nc=nc,
        region=cfg.region.code,
        cache=registry_cache(cfg),
        replicas=cfg.nats.stream_replicas,
        recheck_s=cfg.registry.recheck_s,
        listeners=[secrets.refresh],
    )


def load_secrets(cfg: Config, registry: Registry | None = None) -> RegionSecrets:
    """The region's keys (with their rotation siblings) and correlation key; with ``registry``,
    the signing key is the newest one it lists as valid."""
    region = cfg.region.code
    corr_path = cfg.path(cfg.keys.correlation_key)
    try:
        corr = bytes.fromhex(Path(corr_path).read_text().strip())
    except FileNotFoundError as exc:
        raise ConfigError(f"correlation key file {corr_path} does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"correlation key file {corr_path} must hold hex") from exc
    sig_path, kem_path = cfg.path(cfg.keys.signing_key), cfg.path(cfg.keys.sealing_key)
    # The configured files come first: they are the keys in use until a registry says otherwise.
    signing = [load_signing_key(sig_path, region)]
    signing += [k for k in key_family(sig_path, region, load_signing_key) if k.key_id != signing[0].key_id]
    sealing = [load_sealing_key(kem_path, region)]
    sealing += [k for k in key_family(kem_path, region, load_sealing_key) if k.key_id != sealing[0].key_id]
    secrets = RegionSecrets(
        signing,
        sealing,
        Correlator(corr),
        region=region,
        key_files=(sig_path, kem_path),
        activation_delay_s=cfg.keys.activation_delay_s,
    )
    if registry is not None:
        secrets.refresh(registry)
    return secrets


def _nats_tls(cfg: Config) -> ssl.SSLContext | None:
    """The client-port TLS context of ``[nats]``, or None (plaintext, a server on loopback)."""
    n = cfg.nats
    if not n.tls_ca:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.path(n.tls_ca)))
        if n.tls_cert:
            ctx.load_cert_chain(cfg.path(n.tls_cert), cfg.path(n.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[nats] TLS files cannot be loaded: {exc}") from exc
    return ctx


def nats_seed_file(cfg: Config, role: NatsRole) -> Path:
    """The NKey seed file ``role`` logs in with, checked before any connection: set, a user seed,
    and readable by its owner only (a seed is a password that never leaves the host).

    Raises:
        ConfigError: not set, missing, readable by group or others, or not an NKey user seed.
    """
    setting = cfg.nats.nkey_seed(role)
    if not setting:
        raise ConfigError(
            f"[nats] {role.value}_nkey_seed is not set: the region's nats-server admits no anonymous client"
        )
    path = cfg.path(setting)
    try:
        mode = path.stat().st_mode
        seed = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[nats] {role.value}_nkey_seed {path} cannot be read: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(f"[nats] {role.value}_nkey_seed {path} is readable by others: chmod 600 it")
    natsroles.public_key(seed)
    return path


async def connect_nats(cfg: Config, *, role: NatsRole, name: str, **callbacks: Any) -> NATS:
    """Connect to the region's own nats-server as ``role``'s NKey user, with that role's inbox
    prefix (``_INBOX_<code>.<role>``: in the region's inbox space, apart from the other roles'), over
    TLS first when ``[nats] tls_ca`` is set.

    The first connection must succeed within ``connect_timeout_s`` (per attempt, a few attempts);
    afterwards the client reconnects forever, and the caller's health reflects the state.

    Raises:
        ConfigError: ``role`` is not a process role, its seed or the TLS files are unusable, or
            the server refuses the role's NKey (it does not know the key).
        Unavailable: no server answered.
    """
    if role not in natsroles.PROCESS_ROLES:
        raise ConfigError(f"{role.value} is not a process role of a region's NATS")
    seed = nats_seed_file(cfg, role)
    tls = _nats_tls(cfg)

    async def _error_cb(exc: Exception) -> None:
        log.warning("nats.error", role=role.value, error=type(exc).__name__, detail=str(exc)[:200])

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
    if tls is not None:
        # TLS before the server's first word: nobody in between can make the client speak plaintext
        # and relay its NKey challenge (the server side is `handshake_first: true`).
        opts.update(tls=tls, tls_handshake_first=True)
    # nats-py retries refused credentials like an unreachable server, for ever: a start with a seed
    # the region does not know fails at once instead, naming the role.
    refused = asyncio.Event()
    report = opts["error_cb"]

    async def _refusal_cb(exc: Exception) -> None:
        if _AUTH_REFUSED in str(exc).lower():
            refused.set()
        await report(exc)

    opts["error_cb"] = _refusal_cb
    # Fractional seconds work (nats-py waits with asyncio), though its signature says int.
    opts.update(connect_timeout=cfg.nats.connect_timeout_s, reconnect_time_wait=0.5)
    nc = NATS()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers=cfg.nats.servers,
            name=name,
            nkeys_seed=str(seed),
            inbox_prefix=subjects.client_inbox_prefix(cfg.region.code, role.value).encode(),
            max_reconnect_attempts=cfg.nats.max_reconnect_attempts,
            allow_reconnect=True,
            **opts,
        )
    )
    refusal = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
            await nc.close()
    if connecting.cancelled():
        raise ConfigError(
            f"the nats-server refused the {role.value} user's NKey ([nats] {role.value}_nkey_seed): "
            "is its public key in the region's authorization?"
        )
    try:
        connecting.result()
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        raise Unavailable(f"cannot connect to NATS at {', '.join(cfg.nats.servers)}") from exc
    return nc


_AUTH_REFUSED = "authorization violation"
"""How nats-server names refused credentials (nats-py passes its ``-ERR`` text on)."""
