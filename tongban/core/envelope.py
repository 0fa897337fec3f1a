"""The signed, sealed envelope that crosses regions.

``Envelope { bytes header; bytes body; repeated Signature signatures; }``:

* Sign the exact bytes you send; never re-serialise to verify. Each signature is Ed25519 over a
  DSSE-style pre-authentication encoding (PAE) of (header, body), so no byte can move between the
  two without breaking it.
* Encrypt then sign: the body of a request or response is an HPKE (RFC 9180, base mode) ciphertext
  for the receiving region's X25519 key with the header bytes as ``info``, so a body cannot be
  spliced under another header, while relays and auditors can still check signatures and digests
  without reading personal data.
* Rejections carry a clear :class:`Problem` (no personal data) so even a sender whose keys the
  receiver cannot use learns why it was refused.

Verification raises :class:`EnvelopeRejected` with a ``reason`` naming the exact failed check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from google.protobuf.message import DecodeError

from tongban.core.errors import EnvelopeError, Reason
from tongban.core.keys import SealingKey, SigningKey
from tongban.v1 import envelope_pb2

SUITE = "ed25519+hpke-x25519-hkdfsha256-aes256gcm"
_PAE_TYPE = b"application/vnd.tongban.envelope.v1"
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class EnvelopeRejected(EnvelopeError):
    """An envelope failed a check; ``reason`` names it (one of the envelope reasons of :class:`Reason`)."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message, reason=reason)


class KeyDirectory(Protocol):
    """Where verifiers find public keys (the trust registry implements it)."""

    def signing_public_key(self, key_id: str, *, region: str, at_s: float) -> Ed25519PublicKey:
        """The key ``key_id`` of ``region``, valid at ``at_s``; raises EnvelopeRejected otherwise."""
        ...


def header_or_none(data: bytes) -> envelope_pb2.Header | None:
    """The header of an envelope before any check, for labels only; None if it does not parse."""
    try:
        return parse(data)[1]
    except EnvelopeRejected:
        return None


def pae(header: bytes, body: bytes) -> bytes:
    """DSSE-style pre-authentication encoding of (header, body) under tongban's type string."""
    return (
        b" ".join((b"DSSEv1", str(len(_PAE_TYPE)).encode(), _PAE_TYPE, str(len(header)).encode(), header))
        + b" "
        + str(len(body)).encode()
        + b" "
        + body
    )


def digest(envelope_bytes: bytes) -> bytes:
    """SHA-256 of the envelope as sent; the ledger and receipts name envelopes by this."""
    return hashlib.sha256(envelope_bytes).digest()


def seal(plaintext: bytes, recipient: X25519PublicKey, header: bytes) -> bytes:
    """HPKE-seal ``plaintext`` to ``recipient``, binding it to the header bytes (HPKE ``info``)."""
    return _HPKE.encrypt(plaintext, recipient, info=header)


def open_sealed(ciphertext: bytes, key: SealingKey, header: bytes) -> bytes:
    """Open an HPKE ciphertext; raises EnvelopeRejected(SEAL_INVALID) if it does not open."""
    try:
        return _HPKE.decrypt(ciphertext, key.private, info=header)
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeRejected("sealed body does not open with our key", reason=Reason.SEAL_INVALID) from exc


def sign(header: bytes, body: bytes, key: SigningKey) -> bytes:
    """Sign (header, body) and return the serialised envelope."""
    env = envelope_pb2.Envelope(
        header=header,
        body=body,
        signatures=[envelope_pb2.Signature(key_id=key.key_id, sig=key.sign(pae(header, body)))],
    )
    return env.SerializeToString()


@dataclass(frozen=True)
class Verified:
    """An envelope whose signature checked out; ``header`` is parsed from the signed bytes."""

    header: envelope_pb2.Header
    header_bytes: bytes
    body: bytes
    signer_key_id: str
    digest: bytes


def parse(data: bytes) -> tuple[envelope_pb2.Envelope, envelope_pb2.Header]:
    """Decode envelope and header; raises EnvelopeRejected (ENVELOPE_MALFORMED)."""
    try:
        env = envelope_pb2.Envelope.FromString(data)
        header = envelope_pb2.Header.FromString(env.header)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise EnvelopeRejected("envelope does not decode", reason=Reason.ENVELOPE_MALFORMED) from exc
    if (
        not header.message_id
        or not header.from_region
        or header.kind == envelope_pb2.MESSAGE_KIND_UNSPECIFIED
    ):
        raise EnvelopeRejected("header lacks message id, sender or kind", reason=Reason.ENVELOPE_MALFORMED)
    return env, header


def verify(data: bytes, keys: KeyDirectory, *, now_s: float) -> Verified:
    """Decode ``data`` and check its signature against the sender's registered key.

    The signer must be a signing key of the header's ``from_region``, valid at ``now_s``. Only the
    first signature is checked in the default suite (one signer per region message).
    """
    env, header = parse(data)
    if header.suite != SUITE:
        raise EnvelopeRejected("unsupported cryptographic suite", reason=Reason.UNSUPPORTED_SUITE)
    if not env.signatures:
        raise EnvelopeRejected("envelope carries no signature", reason=Reason.ENVELOPE_UNSIGNED)
    sig = env.signatures[0]
    public = keys.signing_public_key(sig.key_id, region=header.from_region, at_s=now_s)
    try:
        public.verify(sig.sig, pae(env.header, env.body))
    except InvalidSignature as exc:
        raise EnvelopeRejected("signature does not verify", reason=Reason.SIGNATURE_INVALID) from exc
    return Verified(header, env.header, env.body, sig.key_id, digest(data))
