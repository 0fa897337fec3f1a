"""The settings of SQL back ends and services: every mistake is a ConfigError at start-up, naming the
table and the key (never the DSN), and statements are checked for their placeholders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.backends.sql import SqlBackend
from connectors.backends.sql_settings import PostgresSettings, SqliteSettings, placeholders
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

from .conftest import ITEM

SECRET_DSN = "postgresql://reader:s3cret-pw@db.example:5432/hr"
PG = {"kind": "postgres", "dsn": SECRET_DSN}
LITE = {"kind": "sqlite", "path": "demo.db"}


def test_defaults_and_paths(cfg: Config) -> None:
    pg = SqlBackend.from_table("hr", PG, cfg).settings
    assert pg == PostgresSettings(name="hr", dsn=SECRET_DSN)
    assert pg.pool_min == 1 and pg.pool_max == 10 and pg.statement_timeout_s == 5.0
    assert SECRET_DSN not in repr(pg) and "s3cret" not in repr(SqlBackend.from_table("hr", PG, cfg))
    lite = SqlBackend.from_table(
        "demo", {**LITE, "max_concurrency": 2, "statement_timeout_s": 1}, cfg
    ).settings
    assert lite == SqliteSettings(
        name="demo", path=cfg.base_dir / "demo.db", statement_timeout_s=1.0, max_concurrency=2
    )


def test_dsn_file_is_read_relative_to_the_config(cfg: Config, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "hr.dsn").write_text(SECRET_DSN + "\n", encoding="utf-8")
    settings = SqlBackend.from_table("hr", {"kind": "postgres", "dsn_file": "secrets/hr.dsn"}, cfg).settings
    assert isinstance(settings, PostgresSettings) and settings.dsn == SECRET_DSN


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"kind": "oracle"}, "kind must be one of postgres, sqlite"),
        ({"dsn": SECRET_DSN}, "kind is required"),
        ({"kind": "postgres"}, "exactly one of dsn and dsn_file"),
        ({**PG, "dsn_file": "x"}, "exactly one of dsn and dsn_file"),
        ({"kind": "postgres", "dsn_file": "missing.dsn"}, "cannot read"),
        ({"kind": "postgres", "dsn": "mysql://u:s3cret-pw@h/db"}, "must be a postgresql:// URL"),
        ({**PG, "pool_max": 0}, "pool_max: must be an integer >= 1"),
        ({**PG, "pool_min": 3, "pool_max": 2}, "pool_min must not exceed pool_max"),
        ({**PG, "pool_max": True}, "pool_max: must be an integer"),
        ({**PG, "pool_max": "8"}, "pool_max: must be an integer"),
        ({**PG, "statement_timeout_s": 0}, "statement_timeout_s: must be a number of seconds > 0"),
        ({**PG, "connect_timeout_s": float("inf")}, "connect_timeout_s: must be a number"),
        ({**PG, "password": "x"}, "unknown setting(s) 'password'"),
        ({**PG, "path": "x.db"}, "unknown setting(s) 'path'"),
        ({"kind": "sqlite"}, "path (the SQLite file) is required"),
        ({**LITE, "max_concurrency": 0}, "max_concurrency: must be an integer >= 1"),
        ({**LITE, "pool_max": 2}, "unknown setting(s) 'pool_max'"),
    ],
)
def test_bad_backend_settings(cfg: Config, table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SqlBackend.from_table("hr", table, cfg)
    assert says in str(caught.value)
    assert "[backends.hr]" in str(caught.value)
    assert "s3cret" not in str(caught.value)


SELECT = "SELECT name FROM persons WHERE id = $1"


@pytest.mark.parametrize(
    ("kind", "table", "says"),
    [
        ("postgres", {"params": ["applicant.id"]}, "sql is required"),
        ("postgres", {"sql": SELECT, "params": "applicant.id"}, "params: must be a list"),
        ("postgres", {"sql": SELECT, "params": ["applicant.ssn"]}, "unknown source 'applicant.ssn'"),
        ("postgres", {"sql": SELECT, "params": []}, "placeholders ($1) must be $1 … $0"),
        ("postgres", {"sql": SELECT, "params": ["applicant.id", "fields.year"]}, "must be $1 … $2"),
        ("postgres", {"sql": "SELECT $2 AS x", "params": ["applicant.id"]}, "placeholders ($2)"),
        (
            "postgres",
            {"sql": SELECT + "; DELETE FROM persons", "params": ["applicant.id"]},
            "one statement only",
        ),
        ("postgres", {"sql": "SELECT 'open AS x", "params": []}, "unterminated string"),
        ("postgres", {"sql": "SELECT 1 /* open", "params": []}, "unterminated comment"),
        (
            "sqlite",
            {"sql": "SELECT name FROM persons WHERE id = ?", "params": ["applicant.id"]},
            "use the numbered",
        ),
        ("sqlite", {"sql": "SELECT name FROM persons WHERE id = :id", "params": []}, "use the numbered"),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "rows": "all"},
            'rows: must be "one" or "many"',
        ),
        ("postgres", {"sql": SELECT, "params": ["applicant.id"], "rows": "many"}, "list_field"),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "rows": "many", "list_field": "payments"},
            "needs a response field",
        ),
        (
            "postgres",
            {
                "sql": SELECT,
                "params": ["applicant.id"],
                "rows": "many",
                "list_field": "records",
                "max_rows": 0,
            },
            "max_rows: must be an integer >= 1",
        ),
        (
            "postgres",
            {
                "sql": SELECT,
                "params": ["applicant.id"],
                "rows": "many",
                "list_field": "records",
                "max_rows": 10**6,
            },
            "max_rows: must be at most 10000",
        ),
        (
            "postgres",
            {
                "sql": SELECT,
                "params": ["applicant.id"],
                "rows": "many",
                "list_field": "records",
                "empty": "null",
            },
            'empty: must be "not_found" or "empty_list"',
        ),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "max_rows": 5},
            'max_rows: only for rows = "many"',
        ),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "response": ["name"]},
            "response: must be a table",
        ),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "response": {"salary": "salary"}},
            "salary not a response field",
        ),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "response": {"name": 3}},
            "mapped to a column",
        ),
        (
            "postgres",
            {"sql": SELECT, "params": ["applicant.id"], "timeout_s": 1},
            "unknown setting(s) 'timeout_s'",
        ),
    ],
)
def test_bad_service_settings(cfg: Config, kind: str, table: dict[str, Any], says: str) -> None:
    backend = SqlBackend.from_table("hr", PG if kind == "postgres" else LITE, cfg)
    with pytest.raises(ConfigError) as caught:
        backend.service(ITEM.code, table, ITEM)
    assert says in str(caught.value)
    assert f"[services.{ITEM.code}]" in str(caught.value)


@pytest.mark.parametrize(
    ("sql", "numbers"),
    [
        ("SELECT a FROM t WHERE b = $1 AND c = $2 OR d = $1", {1, 2}),
        ("SELECT '$3' AS s, \"col$4\", a$5 FROM t -- $6\nWHERE x = $1 /* $7 */", {1}),
        ("SELECT 'it''s $2' AS s WHERE x = $1;", {1}),
        ("SELECT $$ $2 $$ AS s, $tag$ $3 ; $tag$ AS t WHERE x = $10", {10}),
        ("SELECT data ? 'key' AS has FROM t WHERE id = $1", {1}),  # a jsonb operator, not a placeholder
        ("SELECT 1;  -- done\n", set()),
    ],
)
def test_placeholders_outside_strings_names_and_comments(sql: str, numbers: set[int]) -> None:
    assert placeholders(sql, dialect="postgres", where="t") == numbers


def test_a_service_with_no_parameters_and_a_response_map(cfg: Config) -> None:
    backend = SqlBackend.from_table("hr", LITE, cfg)
    backend.service(ITEM.code, {"sql": "SELECT 'x' AS n", "response": {"name": "n"}}, ITEM)
