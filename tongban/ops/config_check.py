"""``tongban config check``: what a node's config file amounts to, and every problem in it, before a
process is started with it.

:func:`check` loads the file as the gateway and connector would, then looks for what would stop them
or make them unsafe, and reports each problem on its own instead of stopping at the first:

- files the config names that are missing or unreadable (keys, the registry and its root keys, NKey
  seeds, TLS material, the catalogue, secret files of declared back ends);
- private material readable by group or others (keys, seeds, secrets: ``chmod 600``);
- dev-only settings outside dev mode (the demo back ends), and dev mode itself (a warning);
- declared back ends and services the connector would refuse (:mod:`connectors.declared`);
- a NATS server that does not accept a connection (unless ``network=False``).

Nothing secret is printed: a password in a DSN or URL shows as ``***``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connectors.declared import declare
from tongban.core.errors import TongbanError
from tongban.runtime.config import Config, dump_toml
from tongban.runtime.live_catalogue import load_catalogue
from tongban.runtime.natsroles import PROCESS_ROLES

__all__ = ["Report", "check"]

_PASSWORD = re.compile(r"(?<=://)([^:/@\s]+):([^@/\s]+)@")
_CONNECT_TIMEOUT_S = 2.0
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass
class Report:
    """The effective config (TOML, secrets masked), its problems and its warnings."""

    effective: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: str | Path, *, network: bool = True, env: dict[str, str] | None = None) -> Report:
    """Check the node config at ``path`` (``TONGBAN_*`` overrides from ``env``, default none).

    Never raises for what is in the file: a config that does not load is one problem.
    """
    report = Report()
    try:
        cfg = Config.load(path, env=env or {})
    except TongbanError as exc:
        report.problems.append(exc.message)
        return report
    report.effective = effective_toml(cfg)
    report.problems += _files(cfg)
    if cfg.gateway.dev_mode:
        report.warnings.append(
            "[gateway] dev_mode is on: plaintext gRPC, no partner authentication, demo data"
        )
    elif cfg.connector.adapters == "demo":
        report.problems.append('[connector] adapters = "demo" serves in dev mode only')
    report.problems += _declared(cfg)
    if network:
        report.problems += asyncio.run(_nats(cfg.nats.servers))
    return report


def effective_toml(cfg: Config) -> str:
    """Every setting, defaults included, as TOML; passwords in DSNs and URLs masked."""
    tables: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            tables[f.name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        elif isinstance(value, dict):
            tables.update({f"{f.name}.{name}": dict(table) for name, table in value.items()})
    return _PASSWORD.sub(r"\1:***@", dump_toml(tables))


def _private(cfg: Config) -> Iterator[tuple[str, str]]:
    """(setting, file) of every private file the config names."""
    yield "[keys] signing_key", cfg.keys.signing_key
    yield "[keys] sealing_key", cfg.keys.sealing_key
    yield "[keys] correlation_key", cfg.keys.correlation_key
    for role in PROCESS_ROLES:
        yield f"[nats] {role.value}_nkey_seed", cfg.nats.nkey_seed(role)
    yield "[nats] tls_key", cfg.nats.tls_key
    yield "[gateway] tls_key", cfg.gateway.tls_key
    yield "[backend_api] tls_key", cfg.backend_api.tls_key
    yield "[backend_api] webhook_secret_file", cfg.backend_api.webhook_secret_file
    for name, table in cfg.backends.items():
        for key in ("token_file", "hmac_secret_file", "client_key", "dsn_file"):
            if isinstance(table.get(key), str):
                yield f"[backends.{name}] {key}", table[key]


def _public(cfg: Config) -> Iterator[tuple[str, str]]:
    """(setting, file) of every other file the config names."""
    yield "[registry] file", cfg.registry.file
    for i, root in enumerate(cfg.registry.root_keys):
        if not _HEX_KEY.fullmatch(root.strip()):  # an entry is a key in hex, or a file holding one
            yield f"[registry] root_keys[{i}]", root
    yield "[catalogue] file", cfg.catalogue.file
    yield "[nats] tls_ca", cfg.nats.tls_ca
    yield "[nats] tls_cert", cfg.nats.tls_cert
    yield "[gateway] tls_cert", cfg.gateway.tls_cert
    yield "[gateway] client_ca", cfg.gateway.client_ca
    yield "[backend_api] tls_cert", cfg.backend_api.tls_cert
    yield "[backend_api] client_ca", cfg.backend_api.client_ca
    yield "[telemetry] otlp_ca", cfg.telemetry.otlp_ca
    for name, table in cfg.backends.items():
        for key in ("ca_file", "client_cert"):
            if isinstance(table.get(key), str):
                yield f"[backends.{name}] {key}", table[key]


def _files(cfg: Config) -> list[str]:
    problems = []
    for setting, value in _named(_public(cfg)):
        if not cfg.path(value).is_file():
            problems.append(f"{setting}: {cfg.path(value)} does not exist")
    for setting, value in _named(_private(cfg)):
        p = cfg.path(value)
        if not p.is_file():
            problems.append(f"{setting}: {p} does not exist")
        elif p.stat().st_mode & 0o077:
            problems.append(f"{setting}: {p} is readable by group or others: chmod 600 it")
    return problems


def _named(settings: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    return ((s, v) for s, v in settings if v)


def _declared(cfg: Config) -> list[str]:
    if not cfg.backends and not cfg.services:
        return []
    try:
        catalogue = load_catalogue(cfg)
    except (TongbanError, OSError) as exc:
        return [f"[catalogue]: {getattr(exc, 'message', None) or type(exc).__name__}"]

    async def build() -> list[str]:
        try:
            # The back-end API's desk stands in by name only: whether its settings hold is checked above.
            adapters = declare(cfg, catalogue, case_desk=_DESK if _api_configured(cfg) else None)
        except TongbanError as exc:
            return [exc.message]
        await adapters.aclose()
        return []

    return asyncio.run(build())


def _api_configured(cfg: Config) -> bool:
    return bool(cfg.backend_api.listen or cfg.backend_api.webhook_url)


class _Desk:
    """What declared services see of the back-end API's desk when only the config is checked."""

    async def call(self, request: Any) -> Any:
        raise NotImplementedError  # never called: the check builds services, it does not run them


_DESK = _Desk()


async def _nats(servers: Iterable[str]) -> list[str]:
    problems = []
    for url in servers:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        shown = _PASSWORD.sub(r"\1:***@", url)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            problems.append(f"[nats] servers: {shown} does not accept connections ({type(exc).__name__})")
            continue
        writer.close()
    return problems
