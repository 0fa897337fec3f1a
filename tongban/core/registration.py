"""A region's registration request: what a new region hands the registry authority to join.

``tongban region init`` writes it beside the region's new keys; ``tongban registry apply`` reads it.
It holds public material only — the region's code and name, its gateway's address, its signing and
sealing public keys, the catalogue items it offers to provide — as canonical JSON, signed with the
region's new signing key: the authority checks that whoever asks to be registered under that key
holds it (proof of possession), and that the file was not edited on its way.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.core.errors import Reason, RegistryError
from tongban.core.keys import SealingKey, SigningKey, key_id

__all__ = ["Registration"]

_FORMAT = "tongban.registration.v1"
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Registration:
    """What a region asks the registry authority to record."""

    region: str
    name: str
    gateway_address: str
    signing_key: bytes
    """Raw Ed25519 public key."""
    sealing_key: bytes
    """Raw X25519 public key."""
    services: tuple[str, ...] = ()

    @property
    def signing_key_id(self) -> str:
        return key_id(self.region, "sig", self.signing_key)

    @property
    def sealing_key_id(self) -> str:
        return key_id(self.region, "kem", self.sealing_key)

    @classmethod
    def of(
        cls,
        region: str,
        name: str,
        signing: SigningKey,
        sealing: SealingKey,
        *,
        gateway_address: str = "",
        services: tuple[str, ...] = (),
    ) -> Registration:
        return cls(region, name, gateway_address, signing.public_raw, sealing.public_raw, tuple(services))

    def _document(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "region": self.region,
            "name": self.name,
            "gateway_address": self.gateway_address,
            "signing_key": self.signing_key.hex(),
            "sealing_key": self.sealing_key.hex(),
            "services": list(self.services),
        }
        return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, signing: SigningKey) -> bytes:
        """The request file: the document and the region's signature over it (JSON)."""
        document = self._document()
        out = {
            "document": base64.b64encode(document).decode(),
            "signature": base64.b64encode(signing.sign(document)).decode(),
        }
        return (json.dumps(out, indent=2) + "\n").encode()

    @classmethod
    def verify(cls, data: bytes) -> Registration:
        """The request in ``data``, checked: its form, and its signature by the signing key it names.

        Raises:
            RegistryError: REGISTRY_INVALID (not a request, a bad field) or REGISTRY_SIGNATURE.
        """

        def bad(why: str) -> RegistryError:
            return RegistryError(f"not a valid registration request: {why}", reason=Reason.REGISTRY_INVALID)

        if len(data) > _MAX_BYTES:
            raise bad("too large")
        try:
            outer = json.loads(data)
            document = base64.b64decode(outer["document"], validate=True)
            signature = base64.b64decode(outer["signature"], validate=True)
            doc = json.loads(document)
            if doc.get("format") != _FORMAT:
                raise bad("unknown format")
            request = cls(
                region=str(doc["region"]),
                name=str(doc["name"]),
                gateway_address=str(doc["gateway_address"]),
                signing_key=bytes.fromhex(doc["signing_key"]),
                sealing_key=bytes.fromhex(doc["sealing_key"]),
                services=tuple(str(s) for s in doc["services"]),
            )
        except RegistryError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise bad(type(exc).__name__) from exc
        if len(request.signing_key) != 32 or len(request.sealing_key) != 32:
            raise bad("a public key is not 32 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(request.signing_key).verify(signature, document)
        except InvalidSignature as exc:
            raise RegistryError(
                "the registration request is not signed by the signing key it names",
                reason=Reason.REGISTRY_SIGNATURE,
            ) from exc
        return request
