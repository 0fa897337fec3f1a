"""Signed receipts: a region's word that its ledger recorded an envelope, at which leaf.

The receiving connector signs a :class:`Receipt` (region, leaf index of the RECEIVED entry,
envelope digest, message id) with its region's signing key and sends it back in the header of its
response (Query) or of the first event of a case (Submit). The sender verifies it against the
trust registry and keeps it; with the region's checkpoint and an inclusion proof of that leaf, a
third party can later check offline that the delivery is in the region's ledger
(``tongban ledger export`` / ``check-bundle``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import Reason
from tongban.core.keys import SigningKey
from tongban.core.messages import timestamp
from tongban.v1 import envelope_pb2

_DOMAIN = b"tongban.receipt.v1\x00"


def sign_receipt(
    *, region: str, leaf_index: int, envelope_digest: bytes, message_id: str, key: SigningKey
) -> bytes:
    """A SignedReceipt (serialised) for the entry at ``leaf_index``."""
    receipt = envelope_pb2.Receipt(
        region=region,
        leaf_index=leaf_index,
        envelope_digest=envelope_digest,
        message_id=message_id,
        recorded_at=timestamp(time.time()),
    ).SerializeToString()
    return envelope_pb2.SignedReceipt(
        receipt=receipt,
        signature=envelope_pb2.Signature(key_id=key.key_id, sig=key.sign(_DOMAIN + receipt)),
    ).SerializeToString()


def verify_receipt(
    data: bytes, public_key: Callable[[str, str, float], Ed25519PublicKey]
) -> envelope_pb2.Receipt:
    """Check a SignedReceipt; ``public_key(key_id, region, recorded_at_s)`` returns the region's
    signing key, refusing one that is unknown, of another region, or not trusted for that time (a
    live check uses now; an audit months later uses the receipt's time, refusing revoked keys).

    Raises:
        EnvelopeRejected: RECEIPT_INVALID (undecodable or bad signature), or the key lookup's refusal.
    """
    try:
        signed = envelope_pb2.SignedReceipt.FromString(data)
        receipt = envelope_pb2.Receipt.FromString(signed.receipt)
    except DecodeError as exc:
        raise EnvelopeRejected("receipt does not decode", reason=Reason.RECEIPT_INVALID) from exc
    if not signed.HasField("signature") or not receipt.region:
        raise EnvelopeRejected("receipt is unsigned or names no region", reason=Reason.RECEIPT_INVALID)
    recorded = receipt.recorded_at.seconds + receipt.recorded_at.nanos / 1e9
    key = public_key(signed.signature.key_id, receipt.region, recorded)
    try:
        key.verify(signed.signature.sig, _DOMAIN + signed.receipt)
    except InvalidSignature as exc:
        raise EnvelopeRejected("receipt signature does not verify", reason=Reason.RECEIPT_INVALID) from exc
    return receipt
