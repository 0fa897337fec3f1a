"""The connector process's back ends: what ``[connector] adapters`` names, and the demo's place."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from connectors.adapters import Adapter
from connectors.app import load_adapters
from tests.adapters import FailingAdapter
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

PENSION = "SBJFJLCX0001"
CATALOGUE = Catalogue.load()


def back_ends(cfg: Config) -> Mapping[str, Adapter]:
    """A factory as a region would name it in ``[connector] adapters``."""
    return {PENSION: FailingAdapter()}


def _config(tmp_path: Path, connector: str = "", gateway: str = "") -> Config:
    """A node config with only what a test sets (no ``adapters`` setting unless ``connector``)."""
    path = tmp_path / "node.toml"
    path.write_text(f'[region]\ncode = "320200"\n[connector]\n{connector}\n[gateway]\n{gateway}\n')
    return Config.load(path, env={})


@pytest.mark.parametrize(
    "setting", ["", 'adapters = ""', 'adapters = "demo"'], ids=["not-set", "empty", "demo"]
)
def test_a_connector_naming_no_back_end_is_refused_outside_dev_mode(tmp_path: Path, setting: str) -> None:
    cfg = _config(tmp_path, setting)
    assert not cfg.gateway.dev_mode
    with pytest.raises(ConfigError, match="names no back end"):
        load_adapters(cfg, CATALOGUE)
    assert not cfg.path(cfg.connector.demo_db).exists()  # no demo data was even seeded


@pytest.mark.parametrize(
    "setting", ["", 'adapters = ""', 'adapters = "demo"'], ids=["not-set", "empty", "demo"]
)
def test_in_dev_mode_the_demo_back_ends_serve(tmp_path: Path, setting: str) -> None:
    cfg = _config(tmp_path, setting, "dev_mode = true")
    assert set(load_adapters(cfg, CATALOGUE)) <= set(Catalogue.load().codes())
    assert PENSION in load_adapters(cfg, CATALOGUE)
    assert cfg.path(cfg.connector.demo_db).exists()


def test_named_back_ends_serve_outside_dev_mode(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'adapters = "{__name__}:back_ends"')
    adapters = load_adapters(cfg, CATALOGUE)
    assert list(adapters) == [PENSION] and isinstance(adapters[PENSION], FailingAdapter)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("back_ends", "must be 'module:function'"), (f"{__name__}:no_such_factory", "cannot load")],
)
def test_a_malformed_or_missing_factory_is_refused(tmp_path: Path, spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_adapters(_config(tmp_path, f'adapters = "{spec}"', "dev_mode = true"), CATALOGUE)
