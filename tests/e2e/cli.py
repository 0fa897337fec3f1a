"""Running the `tongban` command line as a child process, as an operator would."""

from __future__ import annotations

import asyncio
import sys


async def tongban(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``tongban *args``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tongban.ops.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
