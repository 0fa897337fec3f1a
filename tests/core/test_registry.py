"""Trust registry: signed against a pinned root, rollback refused, key validity and revocation."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tongban.core.envelope import EnvelopeRejected, Reason
from tongban.core.errors import RegistryError
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.registry import Registry, sign_registry
from tongban.ops.devstate import build_registry
from tongban.v1 import registry_pb2


def _doc(version: int = 3) -> tuple[registry_pb2.TrustRegistry, dict[str, tuple[SigningKey, SealingKey]]]:
    keys = {r: (SigningKey.generate(r), SealingKey.generate(r)) for r in ("440300", "320200")}
    return build_registry(keys, ["SBJFJLCX0001"], version=version), keys


def test_signed_by_pinned_root_loads() -> None:
    root = Ed25519PrivateKey.generate()
    doc, keys = _doc()
    reg = Registry.from_signed(sign_registry(doc, root), [root.public_key()])
    assert reg.version == 3
    assert reg.provides("320200", "SBJFJLCX0001")
    assert reg.allows("440300", "any-system", "SBJFJLCX0001", "320200")
    kid, _ = reg.sealing_key_for("320200")
    assert kid == keys["320200"][1].key_id


def test_other_root_refused() -> None:
    doc, _ = _doc()
    data = sign_registry(doc, Ed25519PrivateKey.generate())
    with pytest.raises(RegistryError) as e:
        Registry.from_signed(data, [Ed25519PrivateKey.generate().public_key()])
    assert e.value.reason == "REGISTRY_SIGNATURE"


def test_tampered_document_refused() -> None:
    root = Ed25519PrivateKey.generate()
    doc, _ = _doc()
    signed = registry_pb2.SignedRegistry.FromString(sign_registry(doc, root))
    tampered = registry_pb2.TrustRegistry.FromString(signed.document)
    tampered.access_rules.add(
        caller_region="999999", caller_system="*", service_code="*", provider_region="320200"
    )
    signed.document = tampered.SerializeToString()
    with pytest.raises(RegistryError):
        Registry.from_signed(signed.SerializeToString(), [root.public_key()])


def test_rollback_refused() -> None:
    root = Ed25519PrivateKey.generate()
    doc, _ = _doc(version=3)
    with pytest.raises(RegistryError) as e:
        Registry.from_signed(sign_registry(doc, root), [root.public_key()], min_version=4)
    assert e.value.reason == "REGISTRY_ROLLBACK"


def test_revoked_and_expired_keys_refused() -> None:
    root = Ed25519PrivateKey.generate()
    doc, keys = _doc()
    sz = next(r for r in doc.regions if r.code == "440300")
    sz.keys[0].revoked = True
    reg = Registry.from_signed(sign_registry(doc, root), [root.public_key()])
    with pytest.raises(EnvelopeRejected) as e:
        reg.signing_public_key(keys["440300"][0].key_id, region="440300", at_s=time.time())
    assert e.value.reason == Reason.KEY_REVOKED
    with pytest.raises(EnvelopeRejected) as e:
        reg.signing_public_key(keys["320200"][0].key_id, region="320200", at_s=time.time() + 10 * 365 * 86400)
    assert e.value.reason == Reason.KEY_EXPIRED


def test_unknown_region_has_no_rules() -> None:
    root = Ed25519PrivateKey.generate()
    doc, _ = _doc()
    reg = Registry.from_signed(sign_registry(doc, root), [root.public_key()])
    assert not reg.allows("370200", "x", "SBJFJLCX0001", "320200")
    assert reg.region("370200") is None
