"""Writing a file so that a crash leaves the old content or the new, never a mix or nothing.

The one atomic, durable file write of the code base. It lives here, in the lowest package that
does I/O and imports nothing of ``tongban``, so that the ledger's checkpoint state and everything
above it (runtime, gateway, connectors, operator tooling) write files the same way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``, durably: a reader or a crash sees the old or the new content.

    The data goes to a temporary file beside ``path`` (same directory, so the rename cannot cross a
    file system), which is fsynced, renamed over ``path``, and then the directory is fsynced so the
    rename itself survives a power loss. Missing parent directories are created.

    Args:
        path: the file to write.
        data: its whole new content.
        mode: its permissions, less the process's umask (``0o600`` for keys and seeds). The
            temporary file has them from its creation, so a secret is never readable by others,
            not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name no other writer (process or thread) can pick: O_EXCL then refuses a leftover.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
