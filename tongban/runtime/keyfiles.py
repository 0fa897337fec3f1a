"""A region's private key files: PKCS#8 PEM, readable by their owner only, and their rotation
siblings (``signing-next.pem`` beside ``signing.pem``).

The keys themselves and their encoding are :mod:`tongban.core.keys`; this module puts them on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ledger.files import write_atomically
from tongban.core.keys import SealingKey, SigningKey, private_pem

K = TypeVar("K", SigningKey, SealingKey)


def save_signing_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` to ``path`` (mode 0600), atomically: a running node may be reading the folder
    for new keys."""
    write_atomically(path, private_pem(key.private), mode=0o600)


def save_sealing_key(path: Path, key: SealingKey) -> None:
    """Write ``key`` to ``path`` (mode 0600), atomically (see :func:`save_signing_key`)."""
    write_atomically(path, private_pem(key.private), mode=0o600)


def key_family(path: Path, region: str, load: Callable[[Path, str], K]) -> list[K]:
    """The key at ``path`` and its rotation siblings (``<stem>*<suffix>`` in the same folder)."""
    files = sorted({path, *path.parent.glob(f"{path.stem}*{path.suffix}")})
    return [load(f, region) for f in files if f.is_file()]
