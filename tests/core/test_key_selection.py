"""Which of a region's keys it signs with during a rotation (tongban.runtime.node.RegionSecrets)."""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tongban.core.keys import SealingKey, SigningKey
from tongban.core.messages import timestamp
from tongban.core.privacy import Correlator
from tongban.core.registry import Registry, sign_registry
from tongban.runtime.node import RegionSecrets
from tongban.v1 import registry_pb2

REGION = "440300"


def _registry(keys: list[tuple[SigningKey, float, float, bool]], kem: SealingKey) -> Registry:
    root = Ed25519PrivateKey.generate()
    doc = registry_pb2.TrustRegistry(version=7)
    region = doc.regions.add(code=REGION, name="深圳市")
    for key, not_before, not_after, revoked in keys:
        k = region.keys.add(
            key_id=key.key_id,
            use=registry_pb2.KEY_USE_SIGNING,
            algorithm="ed25519",
            public_key=key.public_raw,
            revoked=revoked,
        )
        k.not_before.CopyFrom(timestamp(not_before))
        if not_after:
            k.not_after.CopyFrom(timestamp(not_after))
    region.keys.add(
        key_id=kem.key_id,
        use=registry_pb2.KEY_USE_SEALING,
        algorithm="x25519-hpke",
        public_key=kem.public_raw,
    )
    return Registry.from_signed(sign_registry(doc, root), [root.public_key()])


def _secrets(
    old: SigningKey, new: SigningKey, kem: SealingKey, delay: float, clock: Callable[[], float] = time.time
) -> RegionSecrets:
    return RegionSecrets(
        [old, new], [kem], Correlator(b"k" * 32), region=REGION, activation_delay_s=delay, clock=clock
    )


def test_a_new_key_is_used_only_after_the_activation_delay() -> None:
    old, new, kem = SigningKey.generate(REGION), SigningKey.generate(REGION), SealingKey.generate(REGION)
    now = time.time()
    secrets = _secrets(old, new, kem, delay=60)
    secrets.refresh(_registry([(old, now - 86400, now + 600, False), (new, now - 5, 0, False)], kem))
    assert secrets.signing.key_id == old.key_id  # listed 5 s ago: peers may not know it yet
    secrets.refresh(_registry([(old, now - 86400, now + 600, False), (new, now - 61, 0, False)], kem))
    assert secrets.signing.key_id == new.key_id


def test_the_new_key_is_used_at_once_when_the_old_one_is_revoked() -> None:
    old, new, kem = SigningKey.generate(REGION), SigningKey.generate(REGION), SealingKey.generate(REGION)
    now = time.time()
    secrets = _secrets(old, new, kem, delay=60)
    secrets.refresh(_registry([(old, now - 86400, 0, True), (new, now - 5, 0, False)], kem))
    assert secrets.signing.key_id == new.key_id


def test_a_waiting_key_is_taken_when_its_time_comes_without_a_new_registry() -> None:
    old, new, kem = SigningKey.generate(REGION), SigningKey.generate(REGION), SealingKey.generate(REGION)
    now = time.time()
    clock = [now]
    secrets = _secrets(old, new, kem, delay=60, clock=lambda: clock[0])
    secrets.refresh(_registry([(old, now - 86400, 0, False), (new, now, 0, False)], kem))
    assert secrets.signing.key_id == old.key_id
    clock[0] = now + 59.9
    assert secrets.signing.key_id == old.key_id
    clock[0] = now + 60  # no refresh, no new registry: the clock alone
    assert secrets.signing.key_id == new.key_id


def test_an_unlisted_key_file_is_never_used() -> None:
    old, stray, kem = SigningKey.generate(REGION), SigningKey.generate(REGION), SealingKey.generate(REGION)
    now = time.time()
    secrets = _secrets(old, stray, kem, delay=0)
    secrets.refresh(_registry([(old, now - 86400, 0, False)], kem))
    assert secrets.signing.key_id == old.key_id
