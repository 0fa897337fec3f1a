"""The ledger store a node's configuration names: SQLite (the embedded default) or PostgreSQL."""

from __future__ import annotations

from ledger.store import LedgerStore
from ledger.store_postgres import PostgresLedger
from ledger.store_sqlite import SQLiteLedger
from tongban.runtime.config import Config


def store_for(cfg: Config) -> LedgerStore:
    """A (not yet opened) store for ``cfg``'s region: ``[ledger] backend = "sqlite"`` (file
    ``path``) or ``"postgres"`` (``dsn``, ``pg_schema``; several replicas of a region may append)."""
    lc, region = cfg.ledger, cfg.region.code
    if lc.backend == "postgres":
        return PostgresLedger(lc.dsn, region, schema=lc.pg_schema)
    return SQLiteLedger(cfg.path(lc.path), region, synchronous=lc.synchronous)
