"""Deliveries at rest: each one sealed to the region's own sealing key, opened only to be streamed or
posted.

The same HPKE sealing as the envelopes between regions (:func:`tongban.core.envelope.seal`), with
the region itself as the recipient and the delivery id as HPKE ``info``: a sealed body cannot be
moved to another row, and the store file holds no applicant's name, ID number or form in clear.
A body sealed before a key rotation opens with the older key, which the region keeps beside the new
one (``sealing*.pem``) until nothing sealed to it is left.
"""

from __future__ import annotations

from typing import Final, Protocol

from connectors.backend_api.queue import Taken
from tongban.core import envelope
from tongban.core.keys import SealingKey
from tongban.v1 import backend_pb2

_INFO: Final = b"tongban.backend-api.delivery.v1\x00"
"""Domain of the sealed bodies (HPKE ``info`` = this + the delivery id)."""


class SealingKeys(Protocol):
    """The region's sealing keys (:class:`tongban.runtime.node.RegionSecrets` is one)."""

    @property
    def sealing(self) -> SealingKey:
        """The key to seal to now."""
        ...

    def sealing_for(self, key_id: str) -> SealingKey:
        """The key ``key_id``; raises EnvelopeRejected when the region does not hold it."""
        ...


class DeliveryVault:
    """Seals deliveries to the region's current sealing key and opens them again."""

    def __init__(self, keys: SealingKeys) -> None:
        self.keys = keys

    def seal(self, delivery: backend_pb2.Delivery) -> tuple[str, bytes]:
        """(key id, sealed body) of ``delivery``."""
        key = self.keys.sealing
        sealed = envelope.seal(
            delivery.SerializeToString(), key.private.public_key(), _info(delivery.delivery_id)
        )
        return key.key_id, sealed

    def open(self, taken: Taken) -> backend_pb2.Delivery:
        """The delivery ``taken`` holds, with its attempt number.

        Raises:
            EnvelopeRejected: the body does not open (a key the region no longer holds, a body
                moved from another row).
        """
        key = self.keys.sealing_for(taken.sealed_key_id)
        delivery = backend_pb2.Delivery.FromString(
            envelope.open_sealed(taken.sealed, key, _info(taken.delivery_id))
        )
        delivery.attempt = taken.attempts
        return delivery


def _info(delivery_id: str) -> bytes:
    return _INFO + delivery_id.encode()
