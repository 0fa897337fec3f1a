"""The signed catalogue: what the registry authority publishes and every node verifies.

A ``SignedCatalogue`` carries the serialised ``Catalogue`` and signatures by the registry root key
(the key nodes pin in ``[registry] root_keys``), over a domain-separated message: a signed trust
registry can never pass for a catalogue, nor the reverse. As with the registry, the signed bytes are
kept as received and never re-serialised to verify, and a node adopts a catalogue only with a higher
revision than the one it holds.

A deployment's catalogue file says what it is by its name: ``*.signed`` is a SignedCatalogue (binary
protobuf), anything else the protobuf JSON of a ``Catalogue`` (the operator's own file, trusted like
the configuration that names it).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.core.registry import root_key_id
from tongban.v1 import catalogue_pb2, envelope_pb2

__all__ = [
    "SIGNED_SUFFIX",
    "CatalogueCheck",
    "CatalogueError",
    "load_file",
    "peek_revision",
    "read_unverified",
    "sign_catalogue",
    "verify_catalogue",
]

SIGNED_SUFFIX = ".signed"
"""A catalogue file with this suffix is a SignedCatalogue; any other is protobuf JSON."""

_DOMAIN = b"tongban.catalogue.v1\x00"


class CatalogueCheck(StrEnum):
    """Which check an offered catalogue failed (a node's record of what it refused)."""

    UNDECODABLE = "CATALOGUE_UNDECODABLE"
    INVALID = "CATALOGUE_INVALID"
    """It decodes but breaks the catalogue's own rules (:meth:`Catalogue.from_proto`)."""
    SIGNATURE = "CATALOGUE_SIGNATURE"
    """Not signed by a pinned root key."""
    ROLLBACK = "CATALOGUE_ROLLBACK"
    """Older than the revision the node holds."""


class CatalogueError(ConfigError):
    """A catalogue document is unusable; ``check`` says why."""

    def __init__(self, message: str, *, check: CatalogueCheck) -> None:
        super().__init__(message)
        self.check = check

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.message, self.check))


def _rebuild(message: str, check: CatalogueCheck) -> CatalogueError:
    return CatalogueError(message, check=check)


def sign_catalogue(msg: catalogue_pb2.Catalogue, root: Ed25519PrivateKey) -> bytes:
    """Serialise and sign ``msg`` with the root key; the SignedCatalogue bytes.

    Raises:
        ConfigError: ``msg`` breaks the catalogue's rules (nothing unusable is ever signed).
    """
    Catalogue.from_proto(msg)
    document = msg.SerializeToString()
    signed = catalogue_pb2.SignedCatalogue(
        document=document,
        signatures=[
            envelope_pb2.Signature(key_id=root_key_id(root.public_key()), sig=root.sign(_DOMAIN + document))
        ],
    )
    return signed.SerializeToString()


def read_unverified(data: bytes) -> catalogue_pb2.Catalogue:
    """The Catalogue inside SignedCatalogue bytes, NOT verified (for tools that show a file).

    Raises:
        CatalogueError: it does not decode (UNDECODABLE).
    """
    try:
        return catalogue_pb2.Catalogue.FromString(catalogue_pb2.SignedCatalogue.FromString(data).document)
    except DecodeError as exc:
        raise CatalogueError("signed catalogue does not decode", check=CatalogueCheck.UNDECODABLE) from exc


def peek_revision(data: bytes) -> int | None:
    """The revision SignedCatalogue bytes claim (not verified), or None if they do not decode."""
    try:
        return int(read_unverified(data).revision)
    except CatalogueError:
        return None


def verify_catalogue(
    data: bytes, root_keys: Iterable[Ed25519PublicKey], *, min_revision: int = 0, keep_revisions: int = 8
) -> Catalogue:
    """Verify SignedCatalogue bytes against the pinned root keys and check the catalogue.

    Args:
        data: the SignedCatalogue bytes.
        root_keys: the registry authority's pinned keys.
        min_revision: refuse an older revision (the one a node holds).
        keep_revisions: the returned catalogue's :attr:`Catalogue.keep_revisions`.

    Raises:
        CatalogueError: undecodable, not signed by a pinned root key, inconsistent, or older than
            ``min_revision`` (its ``check`` says which).
    """
    try:
        signed = catalogue_pb2.SignedCatalogue.FromString(data)
        msg = catalogue_pb2.Catalogue.FromString(signed.document)
    except DecodeError as exc:
        raise CatalogueError("signed catalogue does not decode", check=CatalogueCheck.UNDECODABLE) from exc
    roots = {root_key_id(k): k for k in root_keys}
    if not roots:
        raise CatalogueError("no pinned root key configured", check=CatalogueCheck.SIGNATURE)
    if not any(_verifies(roots.get(sig.key_id), sig.sig, signed.document) for sig in signed.signatures):
        raise CatalogueError("catalogue is not signed by a pinned root key", check=CatalogueCheck.SIGNATURE)
    if msg.revision < min_revision:
        raise CatalogueError(
            f"catalogue revision {msg.revision} is older than {min_revision}", check=CatalogueCheck.ROLLBACK
        )
    try:
        catalogue = Catalogue.from_proto(msg, signed=data)
    except ConfigError as exc:
        raise CatalogueError(exc.message, check=CatalogueCheck.INVALID) from exc
    catalogue.keep_revisions = keep_revisions
    return catalogue


def _verifies(root: Ed25519PublicKey | None, sig: bytes, document: bytes) -> bool:
    if root is None:
        return False
    try:
        root.verify(sig, _DOMAIN + document)
    except InvalidSignature:
        return False
    return True


def load_file(path: Path, root_keys: Iterable[Ed25519PublicKey], *, keep_revisions: int = 8) -> Catalogue:
    """A deployment's catalogue file: a SignedCatalogue (``*.signed``, verified) or protobuf JSON.

    Raises:
        ConfigError: it cannot be read, does not verify or breaks the catalogue's rules.
    """
    if path.name.endswith(SIGNED_SUFFIX):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the catalogue file {path}: {exc.strerror or exc}") from exc
        return verify_catalogue(data, root_keys, keep_revisions=keep_revisions)
    catalogue = Catalogue.load(path)
    catalogue.keep_revisions = keep_revisions
    return catalogue
