"""Envelope unit tests: sign/verify, seal/open, and each named refusal."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tongban.core import envelope, messages
from tongban.core.envelope import EnvelopeRejected, Reason
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.registry import Registry, sign_registry
from tongban.ops.devstate import build_registry
from tongban.v1 import envelope_pb2

SZ, WX, QD = "440300", "320200", "370200"


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    keys = {r: (SigningKey.generate(r), SealingKey.generate(r)) for r in (SZ, WX, QD)}
    root = Ed25519PrivateKey.generate()
    doc = build_registry(keys, ["SBJFJLCX0001"], version=7)
    reg = Registry.from_signed(sign_registry(doc, root), [root.public_key()])
    return {"keys": keys, "registry": reg, "root": root}


def _request(world: dict[str, object], to: str = WX, sealed_for: str | None = None) -> messages.Built:
    keys = world["keys"]
    reg = world["registry"]
    assert isinstance(keys, dict) and isinstance(reg, Registry)
    kid, pub = reg.sealing_key_for(sealed_for or to)
    header = envelope_pb2.Header(
        message_id="01JD0000000000000000000000",
        kind=envelope_pb2.MESSAGE_KIND_REQUEST,
        service_code="SBJFJLCX0001",
        from_region=SZ,
        to_region=to,
        created_at=messages.timestamp(time.time()),
        deadline=messages.timestamp(time.time() + 5),
    )
    return messages.build_sealed(
        header, b"secret body", recipient_key_id=kid, recipient=pub, signer=keys[SZ][0]
    )


def test_round_trip_verifies_and_opens(world: dict[str, object]) -> None:
    built = _request(world)
    v = envelope.verify(built.data, world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert v.header.from_region == SZ and v.digest == built.digest
    assert messages.open_body(v, world["keys"][WX][1]) == b"secret body"  # type: ignore[index]


def test_body_is_not_readable_in_the_envelope(world: dict[str, object]) -> None:
    assert b"secret body" not in _request(world).data


@pytest.mark.parametrize("part", ["header", "body", "sig"])
def test_any_flipped_byte_breaks_the_signature(world: dict[str, object], part: str) -> None:
    env = envelope_pb2.Envelope.FromString(_request(world).data)
    if part == "sig":
        raw = bytearray(env.signatures[0].sig)
        raw[5] ^= 0x01
        env.signatures[0].sig = bytes(raw)
    else:
        raw = bytearray(getattr(env, part))
        raw[-3] ^= 0x01
        setattr(env, part, bytes(raw))
    with pytest.raises(EnvelopeRejected) as e:
        envelope.verify(env.SerializeToString(), world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert e.value.reason in (Reason.SIGNATURE_INVALID, Reason.ENVELOPE_MALFORMED)


def test_unknown_key_id(world: dict[str, object]) -> None:
    env = envelope_pb2.Envelope.FromString(_request(world).data)
    env.signatures[0].key_id = "440300.sig.deadbeef"
    with pytest.raises(EnvelopeRejected) as e:
        envelope.verify(env.SerializeToString(), world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert e.value.reason == Reason.UNKNOWN_KEY


def test_key_of_another_region(world: dict[str, object]) -> None:
    env = envelope_pb2.Envelope.FromString(_request(world).data)
    env.signatures[0].key_id = world["keys"][QD][0].key_id  # type: ignore[index]
    with pytest.raises(EnvelopeRejected) as e:
        envelope.verify(env.SerializeToString(), world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert e.value.reason == Reason.KEY_REGION_MISMATCH


def test_unsigned(world: dict[str, object]) -> None:
    env = envelope_pb2.Envelope.FromString(_request(world).data)
    del env.signatures[:]
    with pytest.raises(EnvelopeRejected) as e:
        envelope.verify(env.SerializeToString(), world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert e.value.reason == Reason.ENVELOPE_UNSIGNED


def test_garbage_is_malformed(world: dict[str, object]) -> None:
    with pytest.raises(EnvelopeRejected) as e:
        envelope.verify(b"\xff\x00garbage", world["registry"], now_s=time.time())  # type: ignore[arg-type]
    assert e.value.reason == Reason.ENVELOPE_MALFORMED


def test_sealed_for_another_region_does_not_open(world: dict[str, object]) -> None:
    built = _request(world, to=WX, sealed_for=QD)
    v = envelope.verify(built.data, world["registry"], now_s=time.time())  # type: ignore[arg-type]
    with pytest.raises(EnvelopeRejected) as e:
        messages.open_body(v, world["keys"][WX][1])  # type: ignore[index]
    assert e.value.reason == Reason.SEALED_FOR_ANOTHER_KEY


def test_seal_bound_to_header(world: dict[str, object]) -> None:
    """A body cannot be moved under another header: HPKE info is the header."""
    built = _request(world)
    env = envelope_pb2.Envelope.FromString(built.data)
    with pytest.raises(EnvelopeRejected) as e:
        envelope.open_sealed(env.body, world["keys"][WX][1], env.header + b"x")  # type: ignore[index]
    assert e.value.reason == Reason.SEAL_INVALID


def test_pae_separates_header_and_body() -> None:
    assert envelope.pae(b"ab", b"c") != envelope.pae(b"a", b"bc")
