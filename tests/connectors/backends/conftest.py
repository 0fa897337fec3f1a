"""Fixtures of the HTTP adapter's tests: a config rooted in the test's directory, the catalogue, a
running back end, and HTTP back ends that are closed at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.backends.http import HttpBackend
from tests.connectors.backends.http_backend import BackendApp
from tongban.core.catalogue import Catalogue
from tongban.runtime.config import Config

MakeBackend = Callable[..., HttpBackend]


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.load()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(base_dir=tmp_path)


@pytest.fixture
async def app() -> AsyncIterator[BackendApp]:
    async with BackendApp() as running:
        yield running


@pytest.fixture
async def backends(cfg: Config) -> AsyncIterator[MakeBackend]:
    """``backends(base_url, **settings)``: an HTTP back end (no retry back-off to speak of unless
    the test sets one), closed when the test ends."""
    made: list[HttpBackend] = []

    def make(base_url: str, name: str = "shebao", **settings: Any) -> HttpBackend:
        table = {"kind": "http", "base_url": base_url, "retry_backoff_s": 0.01, **settings}
        backend = HttpBackend.from_table(name, table, cfg)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()
