"""Keyword search over the catalogue: Chinese by character n-grams, English by words."""

from __future__ import annotations

import pytest

from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_search import CatalogueIndex, terms
from tongban.v1 import catalogue_pb2, exchange_pb2

HOUSING_FUND = {"ZFGJJTQ00001", "GJJDWKH00001"}


def item(msg: catalogue_pb2.Catalogue, code: str, name: str, **kw: object) -> None:
    msg.items.add(
        code=code,
        name=name,
        handling_mode=catalogue_pb2.HANDLING_MODE_QUERY,
        applicant_kind=exchange_pb2.APPLICANT_KIND_PERSON,
        response_fields=["x"],
        share_attribute=exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def index() -> CatalogueIndex:
    """A small catalogue of the kinds of items the real one holds."""
    msg = catalogue_pb2.Catalogue(revision=3)
    fund = "住房公积金管理中心"
    item(
        msg,
        "GJJTQ0000001",
        "住房公积金提取",
        category="公积金",
        name_en="Housing provident fund withdrawal",
        aliases=["公积金提取", "提取公积金"],
        description="购房、退休等情形提取住房公积金账户余额。",
        provider_department=fund,
    )
    item(
        msg,
        "GJJZY0000001",
        "住房公积金异地转移接续",
        category="公积金",
        name_en="Housing provident fund transfer",
        provider_department=fund,
    )
    item(
        msg,
        "YLJLQ0000001",
        "基本养老金领取资格认证",
        category="社保",
        aliases=["养老金认证"],
        name_en="Pension eligibility check",
    )
    item(
        msg,
        "YDJY00000001",
        "跨省异地就医登记备案",
        category="医保",
        aliases=["异地就医备案", "医保备案"],
        description="参保人员跨省异地就医前登记备案。",
    )
    item(
        msg,
        "JSZHZ0000001",
        "机动车驾驶证换证",
        category="驾驶证",
        name_en="Driving licence renewal",
        description="驾驶证有效期满换证。",
    )
    return CatalogueIndex(Catalogue.from_proto(msg))


def codes(index: CatalogueIndex, query: str) -> list[str]:
    return [h.item.code for h in index.search(query)]


def test_terms_are_characters_bigrams_and_lower_case_words() -> None:
    assert terms("公积金 ABC") == {"公", "积", "金", "公积", "积金", "abc"}
    assert terms("ＡＢＣ") == {"abc"}  # full-width folded


def test_gong_ji_jin_finds_the_housing_fund_items_first(index: CatalogueIndex) -> None:
    found = codes(index, "公积金")
    assert set(found[:2]) == {"GJJTQ0000001", "GJJZY0000001"}
    # 金 alone is in 养老金, but 公积金's bigrams are not: no hit
    assert "YLJLQ0000001" not in found


def test_more_words_rank_the_closer_item_first(index: CatalogueIndex) -> None:
    assert codes(index, "公积金 提取")[0] == "GJJTQ0000001"
    assert codes(index, "公积金转移")[0] == "GJJZY0000001"


def test_aliases_and_descriptions_are_searched(index: CatalogueIndex) -> None:
    assert codes(index, "医保") == ["YDJY00000001"]
    assert codes(index, "养老金认证")[0] == "YLJLQ0000001"
    assert codes(index, "有效期满") == ["JSZHZ0000001"]


def test_english_words_are_case_insensitive_and_match_prefixes(index: CatalogueIndex) -> None:
    assert set(codes(index, "Housing FUND")) == {"GJJTQ0000001", "GJJZY0000001"}
    assert codes(index, "licen") == ["JSZHZ0000001"]
    assert codes(index, "pension")[0] == "YLJLQ0000001"


def test_an_item_code_finds_its_item(index: CatalogueIndex) -> None:
    assert codes(index, "jszhz0000001") == ["JSZHZ0000001"]


def test_nothing_matches_nothing(index: CatalogueIndex) -> None:
    assert codes(index, "火星移民") == []
    assert codes(index, "  ,，。 ") == []
    assert index.search("公积金", limit=1)[0].item.code in {"GJJTQ0000001", "GJJZY0000001"}
    assert len(index.search("公积金", limit=1)) == 1


def test_scores_are_best_first(index: CatalogueIndex) -> None:
    hits = index.search("公积金 提取")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.revision == 3


def test_shipped_catalogue_gong_ji_jin() -> None:
    hits = CatalogueIndex(Catalogue.load()).search("公积金")
    top = [h.item.code for h in hits[: len(HOUSING_FUND)]]
    assert set(top) == HOUSING_FUND
