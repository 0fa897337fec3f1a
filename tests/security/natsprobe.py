"""What the NATS permission tests share: the service they send for, how long a read may wait, a
region leaf's view of its connections (``/connz``), and a link that speaks the NATS protocol itself
(software that ignores what it is told, or tries whatever it likes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tongban.ops.natsserver import Topology

SVC = "SBJFJLCX0001"
READ_TIMEOUT = 10.0


def connections(topology: Topology, region: str) -> dict[str, Any]:
    """``/connz`` of ``region``'s leaf, with each connection's user."""
    url = f"{topology.leaves[region].monitor_url}/connz?auth=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@dataclass
class ProtocolLink:
    """One connection speaking the NATS protocol line by line: what the server delivered (subjects)
    and the errors it sent, and whether it closed the link."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    msgs: list[str] = field(default_factory=list)
    """Subjects of the messages the server delivered."""
    errors: list[str] = field(default_factory=list)
    closed: bool = False

    async def send(self, line: str, payload: bytes | None = None) -> None:
        data = line.encode() + b"\r\n"
        if payload is not None:
            data += payload + b"\r\n"
        self.writer.write(data)
        await self.writer.drain()

    async def ping(self) -> None:
        """PING and read up to the PONG (or the close): every line sent before is then processed."""
        await self.send("PING")
        await self.read_until(lambda line: line == "PONG")

    async def read_until(self, stop: Callable[[str], bool]) -> None:
        """Read protocol lines (answering PINGs, recording messages and errors) until ``stop`` holds
        for one or the server closes the link."""
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                self.closed = True
                return
            line = raw.decode().rstrip("\r\n")
            if line == "PING":
                await self.send("PONG")
            elif line.startswith("-ERR"):
                self.errors.append(line)
            elif line.startswith(("MSG ", "HMSG ", "LMSG ", "HLMSG ")):
                parts = line.split()
                await asyncio.wait_for(self.reader.readexactly(int(parts[-1]) + 2), READ_TIMEOUT)
                self.msgs.append(parts[1])
            if stop(line):
                return

    async def read_to_close(self) -> None:
        await self.read_until(lambda _line: False)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()
