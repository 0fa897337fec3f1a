"""The machine's PostgreSQL for the tests that need it: where it is, whether it answers, and what a
missing database means (a failure under ``CI=true``, which promises one; a skip elsewhere)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

import asyncpg
import pytest

PG_DSN = os.environ.get("TONGBAN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_PROBE_TIMEOUT_S = 3.0


def probe_postgres() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when the database answers (a conftest's
    session fixture calls it once)."""

    async def probe() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=PG_PROBE_TIMEOUT_S)
        await conn.close()

    try:
        # Its own thread and event loop: the fixture may first be asked for from inside a running loop.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, probe()).result()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"PostgreSQL at {PG_DSN} is unreachable ({type(exc).__name__}: {exc})"
    return None


def require_postgres(problem: str | None, *, what: str) -> None:
    """Fail (``CI=true``) or skip the calling test when PostgreSQL is not there."""
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true requires PostgreSQL for {what}: {problem}")
    pytest.skip(problem)
