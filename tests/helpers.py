"""Test utilities: waiting on conditions (never on sleeps); free ports for fixed-port servers come
from :func:`tongban.ops.dev.free_port`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nkeys

from ledger import Entry
from tongban.core.details import Detail
from tongban.ops.dev import free_port
from tongban.v1 import registry_pb2

__all__ = ["eventually", "eventually_sync", "free_port", "nkey_connect"]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or check}")
        await asyncio.sleep(0.01)  # the polling interval of the condition wait itself


def eventually_sync(
    check: Callable[[], bool],
    *,
    timeout: float = 10.0,
    what: str = "",
    tolerate: tuple[type[Exception], ...] = (),
) -> None:
    """:func:`eventually` for synchronous code (fixtures outside the event loop, subprocesses):
    exceptions of the ``tolerate`` types count as "not yet" and the last one is named on failure."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if check():
                return
        except tolerate as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or check} ({last})")
        time.sleep(0.05)  # the polling interval of the condition wait itself


def nkey_connect(info_line: bytes, seed_file: Path, **fields: object) -> bytes:
    """The ``CONNECT`` line of a client that speaks the NATS protocol itself, logged in as the NKey
    user of ``seed_file``: the server's nonce (from its ``INFO`` line) signed with the seed."""
    info = json.loads(info_line.decode().split(" ", 1)[1])
    kp = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    try:
        connect = {
            "verbose": False,
            "pedantic": False,
            "nkey": kp.public_key.decode(),
            "sig": base64.b64encode(kp.sign(info["nonce"].encode())).decode(),
            **fields,
        }
    finally:
        kp.wipe()
    return f"CONNECT {json.dumps(connect)}\r\n".encode()


def note(entry: Entry) -> str:
    """A ledger entry's detail as operators read it (``tongban trace``): the typed detail, rendered."""
    return Detail.decode(entry.detail, event=entry.event).render(event=entry.event)


def signing_key_of(doc: registry_pb2.TrustRegistry, region: str) -> registry_pb2.RegionKey:
    """``region``'s signing key in a registry document (the dev registry has one per region)."""
    return next(
        k for r in doc.regions if r.code == region for k in r.keys if k.use == registry_pb2.KEY_USE_SIGNING
    )
