"""Config: TOML plus TONGBAN_<SECTION>__<KEY> overrides, with clear errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tongban.core.errors import ConfigError
from tongban.runtime.config import Config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_file_and_env(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        '[region]\ncode = "440300"\n[gateway]\ndefault_deadline_s = 5\n[ledger]\npath = "l.sqlite"\n',
    )
    cfg = Config.load(
        p, env={"TONGBAN_GATEWAY__DEV_MODE": "true", "TONGBAN_NATS__SERVERS": "nats://a:1,nats://b:2"}
    )
    assert cfg.region.code == "440300"
    assert cfg.gateway.default_deadline_s == 5.0 and cfg.gateway.dev_mode is True
    assert cfg.nats.servers == ["nats://a:1", "nats://b:2"]
    assert cfg.path(cfg.ledger.path) == tmp_path.resolve() / "l.sqlite"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[nope]\nx = 1\n", {}, "unknown config section [nope]"),
        ("[gateway]\nlisten = 5\n", {}, "[gateway] listen must be str"),
        ("[gateway]\nfoo = 1\n", {}, "unknown setting 'foo' in [gateway]"),
        ('[region]\ncode = "4403"\n', {}, "6-digit"),
        ("not toml = = =", {}, "not valid TOML"),
        ("", {"TONGBAN_GATEWAY__MAX_DEADLINE_S": "soon"}, "not a valid float"),
        ('[log]\nformat = "xml"\n', {}, "json or console"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.load(_write(tmp_path, text), env=env)
    assert message in e.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "absent.toml", env={})
