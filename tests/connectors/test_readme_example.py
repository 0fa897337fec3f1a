"""README's "Connect your systems" example is a config the connector accepts, service by service."""

from __future__ import annotations

import re
from pathlib import Path

from connectors.backends.http import HttpBackend
from connectors.backends.sql import SqlBackend
from connectors.declared import declare
from tongban.core.catalogue import Catalogue
from tongban.runtime import certs
from tongban.runtime.config import Config

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Connect your systems") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match is not None, "the section has a TOML example"
    return match.group(1)


async def test_the_readme_example_declares_one_http_and_one_sql_service(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(_example(), encoding="utf-8")
    secrets = tmp_path / "secrets"
    ca = certs.create_ca("renshe CA")
    key, crt = certs.write(certs.issue_named_client(ca, "tongban-320200"), secrets, "renshe-client")
    certs.write(ca, secrets, "renshe-ca")
    (secrets / "renshe-ca.crt").rename(secrets / "renshe-ca.pem")
    Path(crt).rename(secrets / "renshe-client.pem")
    Path(key).rename(secrets / "renshe-client.key")
    (secrets / "renshe-hmac.key").write_text("a shared secret of the province's API gateway\n")
    (secrets / "register.dsn").write_text("postgresql://tongban_ro@127.0.0.1:5432/test\n")

    cfg = Config.load(tmp_path / "node.toml", env={})
    adapters = declare(cfg, Catalogue.load())
    try:
        assert set(adapters) == {"SBJFJLCX0001", "NZQYSLDJ0001"}
        assert isinstance(adapters.backends["renshe"], HttpBackend)
        assert isinstance(adapters.backends["register"], SqlBackend)
    finally:
        await adapters.aclose()
