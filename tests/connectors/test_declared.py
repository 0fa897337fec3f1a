"""Services declared in the connector's config: which back end answers which item, checked at start."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from connectors.adapters import AdapterRequest, CallableAdapter
from connectors.app import load_adapters
from connectors.backends.http import HttpBackend
from connectors.declared import AdapterSet, declare
from tests.adapters import FailingAdapter
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

PENSION = "SBJFJLCX0001"  # 社会保险参保缴费记录查询 (a query item)
FUND_WITHDRAWAL = "ZFGJJTQ00001"  # 住房公积金提取 (a case item)
CATALOGUE = Catalogue.load()


async def pension_answer(request: AdapterRequest) -> Mapping[str, Any]:
    """A region's own Python logic, as ``python = "module:function"`` names it."""
    return {"payment_months": len(request.fields), "asked_by": request.requester_region}


def not_async(request: AdapterRequest) -> Mapping[str, Any]:
    return {}


def back_ends(cfg: Config) -> Mapping[str, Any]:
    """A ``[connector] adapters`` factory."""
    return {PENSION: FailingAdapter(), FUND_WITHDRAWAL: FailingAdapter()}


def _config(tmp_path: Path, text: str, *, dev: bool = False) -> Config:
    path = tmp_path / "node.toml"
    path.write_text(f'[region]\ncode = "320200"\n[gateway]\ndev_mode = {str(dev).lower()}\n{text}\n')
    return Config.load(path, env={})


def _request(**fields: str) -> AdapterRequest:
    return AdapterRequest("01JTESTMESSAGE0000000000000", PENSION, "440300", "person", "", "", fields)


async def test_a_python_service_calls_the_named_function(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'[services.{PENSION}]\npython = "{__name__}:pension_answer"')
    adapters = declare(cfg, CATALOGUE)
    assert list(adapters) == [PENSION]
    answer = await adapters[PENSION].call(_request(insurance_type="110", period_start="2024-01"))
    assert answer == {"payment_months": 2, "asked_by": "440300"}


async def test_an_http_service_is_built_on_its_declared_back_end(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        '[backends.shebao]\nkind = "http"\nbase_url = "http://127.0.0.1:9"\n'
        f'[services.{PENSION}]\nbackend = "shebao"\npath = "/persons/{{applicant.id}}"\n',
    )
    adapters = declare(cfg, CATALOGUE)
    try:
        assert set(adapters) == {PENSION}
        assert isinstance(adapters.backends["shebao"], HttpBackend)
    finally:
        await adapters.aclose()


async def test_declared_services_replace_a_factory_s_and_need_no_dev_mode(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        f'[connector]\nadapters = "{__name__}:back_ends"\n'
        f'[services.{PENSION}]\npython = "{__name__}:pension_answer"',
    )
    adapters = load_adapters(cfg, CATALOGUE)
    assert isinstance(adapters[PENSION], CallableAdapter)
    assert isinstance(adapters[FUND_WITHDRAWAL], FailingAdapter)


async def test_services_alone_serve_outside_dev_mode_and_the_demo_stays_out(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'[services.{PENSION}]\npython = "{__name__}:pension_answer"')
    assert list(load_adapters(cfg, CATALOGUE)) == [PENSION]
    assert not cfg.path(cfg.connector.demo_db).exists()


def test_the_back_end_api_takes_only_case_items(tmp_path: Path) -> None:
    desk = FailingAdapter()
    cfg = _config(tmp_path, f"[services.{FUND_WITHDRAWAL}]\nbackend_api = true")
    assert declare(cfg, CATALOGUE, case_desk=desk)[FUND_WITHDRAWAL] is desk
    with pytest.raises(ConfigError, match="needs \\[backend_api\\]"):
        declare(cfg, CATALOGUE)
    query = _config(tmp_path, f"[services.{PENSION}]\nbackend_api = true")
    with pytest.raises(ConfigError, match="is a query item"):
        declare(query, CATALOGUE, case_desk=desk)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[backends.x]\nkind = "ftp"', "kind must be one of http, postgres, sqlite"),
        ("[backends.x]\nretries = 1", "kind must be one of"),
        ('[services.NOSUCHITEM0001]\npython = "m:f"', "the catalogue has no item NOSUCHITEM0001"),
        (f'[services.{PENSION}]\nbackend = "nowhere"', "no \\[backends.nowhere\\] is declared"),
        (f'[services.{PENSION}]\npath = "/x"', "exactly one of backend, python, backend_api"),
        (
            f'[services.{PENSION}]\npython = "{__name__}:pension_answer"\nbackend_api = true',
            "exactly one of",
        ),
        (f'[services.{PENSION}]\npython = "pension_answer"', "must be 'module:function'"),
        (f'[services.{PENSION}]\npython = "{__name__}:nothing_here"', "cannot load"),
        (f'[services.{PENSION}]\npython = "{__name__}:not_async"', "is not an async function"),
        (
            f'[services.{PENSION}]\npython = "{__name__}:pension_answer"\npath = "/x"',
            "takes no other settings",
        ),
        (f"[services.{FUND_WITHDRAWAL}]\nbackend_api = 1", "backend_api = true takes no other"),
        ("[services]\nx = 1", "one table per name"),
    ],
)
def test_a_mistake_in_the_declarations_stops_the_start(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        declare(_config(tmp_path, text), CATALOGUE)


async def test_closing_the_set_closes_each_back_end_once_even_if_one_fails() -> None:
    closed: list[str] = []

    class Closing:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def service(self, code: str, table: Mapping[str, Any], item: Any) -> Any:
            raise NotImplementedError

        async def aclose(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise OSError("pool already gone")

    adapters = AdapterSet({}, {"a": Closing("a", fail=True), "b": Closing("b")})
    await adapters.aclose()
    assert closed == ["a", "b"]
