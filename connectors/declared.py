"""The back ends a connector's config declares, turned into adapters: no code needed.

A region names its back-end systems once, in ``[backends.<name>]`` (an HTTP service, a PostgreSQL or
SQLite database; pools, timeouts, authentication, limits belong to the back end), and says per catalogue
item, in ``[services.<item code>]``, which back end answers it and how::

    [backends.shebao]
    kind = "http"
    base_url = "https://shebao.example.gov.cn/api"

    [services.SBJFJLCX0001]
    backend = "shebao"
    path = "/persons/{applicant.id}/contributions"
    response = { payment_months = "$.data.months" }

A service takes exactly one of:

- ``backend = "<name>"``: the HTTP or SQL back end of that name (its settings: docs/adapters/http.md,
  docs/adapters/sql.md);
- ``python = "module:function"``: an ``async def function(request: AdapterRequest) -> Mapping`` for
  custom logic;
- ``backend_api = true``: a case item whose cases the region's own case-handling system takes through
  the back-end API (docs/backend-api.md).

Everything is checked when the connector starts: an unknown back end, an item the catalogue does not
have, a mapping to an undeclared response field are :class:`ConfigError` before any request is taken.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog

from connectors.adapters import Adapter, CallableAdapter, Handler
from connectors.backends.http import HttpBackend
from connectors.backends.sql import SqlBackend
from tongban.core.catalogue import Catalogue, CatalogueItem
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config
from tongban.v1 import catalogue_pb2

__all__ = ["AdapterSet", "Backend", "declare"]

log = structlog.get_logger("connectors.declared")


class Backend(Protocol):
    """A back-end system named in ``[backends.<name>]``."""

    def service(self, code: str, table: Mapping[str, Any], item: CatalogueItem) -> Adapter:
        """The adapter for one catalogue item, from its ``[services.<code>]`` table (without ``backend``)."""
        ...

    async def aclose(self) -> None:
        """Close pools and clients (bounded)."""
        ...


BackendFactory = Callable[[str, Mapping[str, Any], Config], Backend]

KINDS: Mapping[str, BackendFactory] = {
    "http": HttpBackend.from_table,
    "postgres": SqlBackend.from_table,
    "sqlite": SqlBackend.from_table,
}
"""``[backends.<name>] kind`` → the class that reads the rest of the table."""

_ROUTES = ("backend", "python", "backend_api")


class AdapterSet(Mapping[str, Adapter]):
    """Adapters by item code, and the back ends behind them (closed with :meth:`aclose`)."""

    def __init__(
        self, adapters: Mapping[str, Adapter], backends: Mapping[str, Backend] | None = None
    ) -> None:
        self._adapters = dict(adapters)
        self.backends = dict(backends or {})

    def __getitem__(self, code: str) -> Adapter:
        return self._adapters[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._adapters)

    def __len__(self) -> int:
        return len(self._adapters)

    def merged(self, earlier: Mapping[str, Adapter]) -> AdapterSet:
        """These adapters over ``earlier`` ones (a declared service replaces a factory's)."""
        return AdapterSet({**earlier, **self._adapters}, self.backends)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close every back end, each within ``timeout`` seconds; a failing close is logged, not raised."""
        for name, backend in self.backends.items():
            try:
                async with asyncio.timeout(timeout):
                    await backend.aclose()
            except Exception as exc:
                log.warning("backend.close_failed", backend=name, error=type(exc).__name__)


def declare(cfg: Config, catalogue: Catalogue, *, case_desk: Adapter | None = None) -> AdapterSet:
    """The adapters ``[services]`` declares, on the back ends ``[backends]`` declares.

    Args:
        cfg: the connector's config.
        catalogue: the items services may name.
        case_desk: the back-end API's case adapter, for services with ``backend_api = true``.

    Raises:
        ConfigError: anything wrong in ``[backends]`` or ``[services]`` (the process does not start).
    """
    backends = {name: _backend(name, table, cfg) for name, table in cfg.backends.items()}
    adapters = {
        code: _service(code, table, catalogue, backends, case_desk) for code, table in cfg.services.items()
    }
    unused = sorted(set(backends) - {str(t.get("backend")) for t in cfg.services.values()})
    if unused:
        log.info("backend.unused", backends=unused)
    return AdapterSet(adapters, backends)


def _backend(name: str, table: Mapping[str, Any], cfg: Config) -> Backend:
    kind = table.get("kind")
    factory = KINDS.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ConfigError(f"[backends.{name}] kind must be one of {', '.join(KINDS)}")
    return factory(name, table, cfg)


def _service(
    code: str,
    table: Mapping[str, Any],
    catalogue: Catalogue,
    backends: Mapping[str, Backend],
    case_desk: Adapter | None,
) -> Adapter:
    where = f"[services.{code}]"
    item = catalogue.get(code)
    if item is None:
        raise ConfigError(f"{where}: the catalogue has no item {code}")
    routes = [r for r in _ROUTES if r in table]
    if len(routes) != 1:
        raise ConfigError(f"{where} needs exactly one of backend, python, backend_api")
    rest = {k: v for k, v in table.items() if k != routes[0]}
    match routes[0]:
        case "backend":
            name = table["backend"]
            backend = backends.get(name) if isinstance(name, str) else None
            if backend is None:
                raise ConfigError(f"{where} backend {name!r}: no [backends.{name}] is declared")
            return backend.service(code, rest, item)
        case "python":
            if rest:
                raise ConfigError(f"{where}: a python service takes no other settings ({', '.join(rest)})")
            return CallableAdapter(_function(table["python"], where))
        case _:
            if table["backend_api"] is not True or rest:
                raise ConfigError(f"{where}: backend_api = true takes no other settings")
            if item.handling_mode == catalogue_pb2.HANDLING_MODE_QUERY:
                raise ConfigError(f"{where}: {code} is a query item; the back-end API takes cases")
            if case_desk is None:
                raise ConfigError(f"{where}: backend_api needs [backend_api] listen or webhook_url")
            return case_desk


def _function(spec: Any, where: str) -> Handler:
    """The async function ``module:function`` names."""
    module, _, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not module or not name:
        raise ConfigError(f"{where} python must be 'module:function'")
    try:
        func = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where} python: cannot load {spec}") from exc
    if not inspect.iscoroutinefunction(func):
        raise ConfigError(f"{where} python: {spec} is not an async function")
    handler: Handler = func
    return handler
