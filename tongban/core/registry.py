"""The trust registry: who the regions are, their keys, what they provide and who may call what.

The registry authority signs a ``TrustRegistry`` document with its root key; nodes pin the root
public key(s) in their configuration and refuse any document that is not signed by one of them or
whose version is lower than the one they hold. The signed bytes are kept as received: they are
never re-serialised to verify.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from google.protobuf.message import DecodeError

from tongban.core.envelope import EnvelopeRejected, Reason
from tongban.core.errors import RegistryError
from tongban.core.keys import SEALING_ALGORITHM, SIGNING_ALGORITHM, raw_public
from tongban.v1 import envelope_pb2, registry_pb2

_DOMAIN = b"tongban.registry.v1\x00"


def root_key_id(public: Ed25519PublicKey) -> str:
    return "root." + hashlib.sha256(raw_public(public)).hexdigest()[:8]


def sign_registry(doc: registry_pb2.TrustRegistry, root: Ed25519PrivateKey) -> bytes:
    """Serialise and sign ``doc`` with the root key; returns the SignedRegistry bytes."""
    document = doc.SerializeToString()
    signed = registry_pb2.SignedRegistry(
        document=document,
        signatures=[
            envelope_pb2.Signature(key_id=root_key_id(root.public_key()), sig=root.sign(_DOMAIN + document))
        ],
    )
    return signed.SerializeToString()


@dataclass(frozen=True)
class KeyInfo:
    """A public key from the registry with its validity."""

    key_id: str
    region: str
    use: int
    algorithm: str
    public_raw: bytes
    not_before_s: float
    not_after_s: float
    revoked: bool

    def check_valid(self, at_s: float) -> None:
        if self.revoked:
            raise EnvelopeRejected(f"key {self.key_id} is revoked", reason=Reason.KEY_REVOKED)
        if at_s < self.not_before_s or (self.not_after_s and at_s > self.not_after_s):
            raise EnvelopeRejected(
                f"key {self.key_id} is outside its validity period", reason=Reason.KEY_EXPIRED
            )


@dataclass
class Registry:
    """A verified trust registry, indexed for the lookups on the hot path."""

    version: int
    document: registry_pb2.TrustRegistry
    signed: bytes = b""
    """The SignedRegistry bytes this was verified from (what is persisted and re-published)."""
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    regions: dict[str, registry_pb2.Region] = field(default_factory=dict)
    _ed25519: dict[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    _x25519: dict[str, X25519PublicKey] = field(default_factory=dict, repr=False)

    @classmethod
    def from_signed(
        cls, data: bytes, root_keys: Iterable[Ed25519PublicKey], *, min_version: int = 0
    ) -> Registry:
        """Verify a SignedRegistry against the pinned root keys and index it.

        Raises:
            RegistryError: undecodable, unsigned, not signed by a pinned root key, or older than
                ``min_version``.
        """
        try:
            signed = registry_pb2.SignedRegistry.FromString(data)
            doc = registry_pb2.TrustRegistry.FromString(signed.document)
        except DecodeError as exc:
            raise RegistryError("trust registry does not decode") from exc
        roots = {root_key_id(k): k for k in root_keys}
        if not roots:
            raise RegistryError("no pinned root key configured")
        ok = False
        for sig in signed.signatures:
            root = roots.get(sig.key_id)
            if root is None:
                continue
            try:
                root.verify(sig.sig, _DOMAIN + signed.document)
                ok = True
                break
            except InvalidSignature:
                continue
        if not ok:
            raise RegistryError(
                "trust registry is not signed by a pinned root key", reason=Reason.REGISTRY_SIGNATURE
            )
        if doc.version < min_version:
            raise RegistryError(
                f"trust registry version {doc.version} is older than {min_version}",
                reason=Reason.REGISTRY_ROLLBACK,
            )
        reg = cls._index(doc)
        reg.signed = data
        return reg

    @classmethod
    def read_unverified(cls, data: bytes) -> Registry:
        """Index a SignedRegistry WITHOUT checking its signature: for a tool that reports "root key
        not pinned" and shows what the document says; never for a node's decisions.

        Raises:
            RegistryError: it does not decode.
        """
        try:
            doc = registry_pb2.TrustRegistry.FromString(registry_pb2.SignedRegistry.FromString(data).document)
        except DecodeError as exc:
            raise RegistryError("trust registry does not decode") from exc
        reg = cls._index(doc)
        reg.signed = data
        return reg

    def adopt(self, newer: Registry) -> None:
        """Take over ``newer``'s contents in place, so every holder of this object sees them.

        One synchronous step: on the event loop no lookup can observe half of the change.
        """
        self.version, self.document, self.signed = newer.version, newer.document, newer.signed
        self.keys, self.regions = newer.keys, newer.regions
        self._ed25519, self._x25519 = newer._ed25519, newer._x25519

    def keys_of(self, region: str, use: int) -> list[KeyInfo]:
        """``region``'s keys of one use (``registry_pb2.KEY_USE_*``), in registry order."""
        return [k for k in self.keys.values() if k.region == region and k.use == use]

    @classmethod
    def load(cls, path: Path, root_keys: Iterable[Ed25519PublicKey]) -> Registry:
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise RegistryError(f"trust registry file {path} does not exist") from exc
        return cls.from_signed(data, root_keys)

    @classmethod
    def _index(cls, doc: registry_pb2.TrustRegistry) -> Registry:
        reg = cls(version=doc.version, document=doc)
        for region in doc.regions:
            reg.regions[region.code] = region
            for k in region.keys:
                info = KeyInfo(
                    key_id=k.key_id,
                    region=region.code,
                    use=k.use,
                    algorithm=k.algorithm,
                    public_raw=bytes(k.public_key),
                    not_before_s=k.not_before.seconds + k.not_before.nanos / 1e9,
                    not_after_s=k.not_after.seconds + k.not_after.nanos / 1e9,
                    revoked=k.revoked,
                )
                if info.key_id in reg.keys:
                    raise RegistryError(f"key id {info.key_id} listed twice")
                reg.keys[info.key_id] = info
                try:
                    if k.use == registry_pb2.KEY_USE_SIGNING and k.algorithm == SIGNING_ALGORITHM:
                        reg._ed25519[k.key_id] = Ed25519PublicKey.from_public_bytes(info.public_raw)
                    elif k.use == registry_pb2.KEY_USE_SEALING and k.algorithm == SEALING_ALGORITHM:
                        reg._x25519[k.key_id] = X25519PublicKey.from_public_bytes(info.public_raw)
                except ValueError as exc:
                    raise RegistryError(f"key {k.key_id} is not a valid {k.algorithm} key") from exc
        return reg

    # -- lookups ---------------------------------------------------------------------------

    def signing_public_key(self, key_id: str, *, region: str, at_s: float) -> Ed25519PublicKey:
        """The Ed25519 key ``key_id``; it must belong to ``region`` and be valid at ``at_s``."""
        info = self.keys.get(key_id)
        if info is None:
            raise EnvelopeRejected("signing key id is not in the trust registry", reason=Reason.UNKNOWN_KEY)
        if info.region != region:
            raise EnvelopeRejected("signing key belongs to another region", reason=Reason.KEY_REGION_MISMATCH)
        public = self._ed25519.get(key_id)
        if public is None:
            raise EnvelopeRejected(f"key {key_id} is not a signing key", reason=Reason.KEY_NOT_FOR_SIGNING)
        info.check_valid(at_s)
        return public

    def sealing_key_for(self, region: str, *, at_s: float | None = None) -> tuple[str, X25519PublicKey]:
        """The newest valid sealing key of ``region``."""
        at = time.time() if at_s is None else at_s
        best: KeyInfo | None = None
        for info in self.keys.values():
            if info.region != region or info.key_id not in self._x25519:
                continue
            try:
                info.check_valid(at)
            except EnvelopeRejected:
                continue
            if best is None or info.not_before_s > best.not_before_s:
                best = info
        if best is None:
            raise EnvelopeRejected(f"region {region} has no valid sealing key", reason=Reason.UNKNOWN_KEY)
        return best.key_id, self._x25519[best.key_id]

    def sealing_public(self, key_id: str) -> X25519PublicKey:
        """The sealing key ``key_id`` itself (for a test or a tool; senders use sealing_key_for)."""
        public = self._x25519.get(key_id)
        if public is None:
            raise EnvelopeRejected(
                f"{key_id} is not a sealing key in the trust registry", reason=Reason.UNKNOWN_KEY
            )
        return public

    def region(self, code: str) -> registry_pb2.Region | None:
        return self.regions.get(code)

    def provides(self, region: str, service_code: str) -> bool:
        r = self.regions.get(region)
        return r is not None and service_code in r.provided_services

    def allows(self, caller_region: str, caller_system: str, service_code: str, provider_region: str) -> bool:
        """Whether an access rule lets the caller use ``service_code`` of ``provider_region``."""
        for rule in self.document.access_rules:
            if (
                rule.caller_region == caller_region
                and rule.provider_region == provider_region
                and rule.caller_system in ("*", caller_system)
                and rule.service_code in ("*", service_code)
            ):
                return True
        return False
