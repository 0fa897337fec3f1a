"""A region's own secret keys, their encoding and how they are read.

Each region holds one Ed25519 signing key and one X25519 sealing (HPKE KEM) key at a time; their
public halves and key ids are published in the trust registry. Private keys are PKCS#8 PEM files
with 0600 permissions (written by :mod:`tongban.runtime.keyfiles`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tongban.core.errors import ConfigError

SIGNING_ALGORITHM = "ed25519"
SEALING_ALGORITHM = "x25519-hpke"


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(region: str, use: str, public: bytes) -> str:
    """Key id: region, use and a fingerprint, e.g. ``440300.sig.3f9a1c0e``."""
    return f"{region}.{use}.{hashlib.sha256(public).hexdigest()[:8]}"


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and its registry key id."""

    key_id: str
    private: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return raw_public(self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @classmethod
    def generate(cls, region: str) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(key_id(region, "sig", raw_public(private.public_key())), private)


@dataclass(frozen=True)
class SealingKey:
    """An X25519 private key (HPKE recipient) and its registry key id."""

    key_id: str
    private: X25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return raw_public(self.private.public_key())

    @classmethod
    def generate(cls, region: str) -> SealingKey:
        private = X25519PrivateKey.generate()
        return cls(key_id(region, "kem", raw_public(private.public_key())), private)


def private_pem(private: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (how a region's key files hold it)."""
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(path: Path) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"key file {path} does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"key file {path} is not a PEM private key") from exc


def load_signing_key(path: Path, region: str) -> SigningKey:
    private = _load_private(path)
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"key file {path} is not an Ed25519 key")
    return SigningKey(key_id(region, "sig", raw_public(private.public_key())), private)


def load_sealing_key(path: Path, region: str) -> SealingKey:
    private = _load_private(path)
    if not isinstance(private, X25519PrivateKey):
        raise ConfigError(f"key file {path} is not an X25519 key")
    return SealingKey(key_id(region, "kem", raw_public(private.public_key())), private)
