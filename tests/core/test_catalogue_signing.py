"""Signed catalogues: signed by the registry root, verified, refused when forged, older or broken."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_signing import (
    CatalogueCheck,
    CatalogueError,
    load_file,
    peek_revision,
    read_unverified,
    sign_catalogue,
    verify_catalogue,
)
from tongban.core.errors import ConfigError
from tongban.core.registry import sign_registry
from tongban.v1 import catalogue_pb2, registry_pb2

ROOT = Ed25519PrivateKey.generate()


def document(n: int = 2) -> catalogue_pb2.Catalogue:
    msg = Catalogue.load().to_proto()
    msg.revision = n
    msg.version = f"2026.{n}"
    return msg


def check_of(data: bytes, **kw: object) -> CatalogueCheck:
    with pytest.raises(CatalogueError) as caught:
        verify_catalogue(data, kw.pop("roots", [ROOT.public_key()]), **kw)  # type: ignore[arg-type]
    return caught.value.check


def test_signed_catalogue_verifies_with_the_root_key() -> None:
    data = sign_catalogue(document(3), ROOT)
    catalogue = verify_catalogue(data, [ROOT.public_key()], keep_revisions=5)
    assert catalogue.revision == 3 and catalogue.version == "2026.3"
    assert catalogue.signed == data and catalogue.keep_revisions == 5
    assert catalogue.codes() == Catalogue.load().codes()
    assert peek_revision(data) == 3 and read_unverified(data).revision == 3


def test_another_root_is_refused() -> None:
    data = sign_catalogue(document(), Ed25519PrivateKey.generate())
    assert check_of(data) is CatalogueCheck.SIGNATURE


def test_no_pinned_root_is_refused() -> None:
    assert check_of(sign_catalogue(document(), ROOT), roots=[]) is CatalogueCheck.SIGNATURE


def test_an_altered_document_is_refused() -> None:
    signed = catalogue_pb2.SignedCatalogue.FromString(sign_catalogue(document(), ROOT))
    msg = catalogue_pb2.Catalogue.FromString(signed.document)
    msg.items[0].fields[0].required = not msg.items[0].fields[0].required
    signed.document = msg.SerializeToString()
    assert check_of(signed.SerializeToString()) is CatalogueCheck.SIGNATURE


def test_a_signed_registry_does_not_pass_for_a_catalogue() -> None:
    """Domain separation: the same root signs both kinds of document."""
    registry = registry_pb2.SignedRegistry.FromString(
        sign_registry(registry_pb2.TrustRegistry(version=2), ROOT)
    )
    forged = catalogue_pb2.SignedCatalogue(document=registry.document, signatures=registry.signatures)
    assert check_of(forged.SerializeToString()) is CatalogueCheck.SIGNATURE


def test_an_older_revision_is_a_rollback() -> None:
    data = sign_catalogue(document(2), ROOT)
    assert check_of(data, min_revision=3) is CatalogueCheck.ROLLBACK
    assert verify_catalogue(data, [ROOT.public_key()], min_revision=2).revision == 2


def test_garbage_does_not_decode() -> None:
    assert check_of(b"\xff\xff not protobuf") is CatalogueCheck.UNDECODABLE
    assert peek_revision(b"\xff\xff") is None


def test_a_validly_signed_but_broken_catalogue_is_invalid() -> None:
    msg = document()
    msg.items[0].fields[0].pattern = "(a+)+"
    document_bytes = msg.SerializeToString()
    # sign_catalogue refuses to sign it; a careless signer might not.
    with pytest.raises(ConfigError):
        sign_catalogue(msg, ROOT)
    signed = catalogue_pb2.SignedCatalogue(document=document_bytes)
    signed.signatures.add(key_id=verify_key_id(), sig=ROOT.sign(b"tongban.catalogue.v1\x00" + document_bytes))
    assert check_of(signed.SerializeToString()) is CatalogueCheck.INVALID


def verify_key_id() -> str:
    signed = catalogue_pb2.SignedCatalogue.FromString(sign_catalogue(document(), ROOT))
    return signed.signatures[0].key_id


def test_catalogue_error_survives_pickling() -> None:
    err = CatalogueError("older", check=CatalogueCheck.ROLLBACK)
    again = pickle.loads(pickle.dumps(err))
    assert (again.message, again.check, again.reason) == ("older", CatalogueCheck.ROLLBACK, err.reason)


def test_a_deployment_file_says_by_its_name_what_it_is(tmp_path: Path) -> None:
    signed = tmp_path / "catalogue.signed"
    signed.write_bytes(sign_catalogue(document(4), ROOT))
    plain = tmp_path / "catalogue.json"
    plain.write_text(json_format.MessageToJson(document(5)), encoding="utf-8")
    assert load_file(signed, [ROOT.public_key()], keep_revisions=3).revision == 4
    from_json = load_file(plain, [ROOT.public_key()], keep_revisions=3)
    assert (from_json.revision, from_json.signed, from_json.keep_revisions) == (5, b"", 3)
    with pytest.raises(CatalogueError):
        load_file(signed, [Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.signed", [ROOT.public_key()])
