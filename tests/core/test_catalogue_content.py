"""The content of the embedded catalogue: the 跨省通办 categories it covers, how well its items are described.

tests/core/test_catalogue.py checks the loader and request validation; this module checks the data a
partner reads through ``GetService`` and ``SearchServices``: every category of the 国办 list has items,
every field and response field is labelled and typed, personal data is flagged, the formats (patterns,
lengths) are consistent with each other, and the 8 items that demo back ends, test vectors and partners
already depend on keep their original attributes (only descriptive attributes were added to them).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from importlib import resources
from typing import Literal, get_args

import pytest
from google.protobuf import json_format

from tongban.core.catalogue import Catalogue, CatalogueItem, validate_request
from tongban.v1 import catalogue_pb2, exchange_pb2

CATALOGUE = Catalogue.load()
ITEMS = list(CATALOGUE)
IDS = [item.code for item in ITEMS]
TODAY = datetime.date(2026, 11, 22)

CATEGORIES = frozenset(
    {"社保", "医保", "公积金", "户籍", "婚姻登记", "出生", "教育学历", "不动产", "企业登记", "税务", "驾驶证"}
)
"""The 跨省通办 categories of the 国办 lists (国办发〔2020〕35号, 〔2022〕34号) the catalogue covers."""

ORIGINAL_DIGESTS = {
    "SBJFJLCX0001": "3209afa35c25523d4dab042eabe8122a3a547b0b6ff708360ceb43f39d3620db",
    "YLBXZYJX0001": "dffab9a25e085986ab2dad39aae019d9fc8adb243ca70473253c432609e1cf07",
    "YLDYZGRZ0001": "12c5335eca76ef5805bbff268d895e12f9285161cbcd30aec60fe2112bbc6212",
    "YDJYDJBA0001": "81c1b5d119aa29558acb982560c6a26f9458a3be24d9b5f3c14320062b5da31a",
    "ZFGJJTQ00001": "c8b83b2b15f72948461c39ec7b5bd79d3c298b524f53893c85ba303654751e38",
    "WFZJLZM00001": "a13389b747cf91a33da6be248c0b2793406df45ca80d6ef6bbfcb8a49d6b56b7",
    "NZQYSLDJ0001": "dd3deb28b488098357f76cd2b175ef725aa3cdc007a9dfb4b4eb1ba30ab2e2d6",
    "GJJDWKH00001": "28494e344b350c29917d12d4043745d4b387b5ee66943bc8988ac3deb7ebbbdd",
}
"""The 8 items of catalogue 2026.11-dev, in catalogue order, with the SHA-256 of :func:`original_attributes`
computed from that catalogue (commit d1c625f). Demo back ends, test vectors and partners depend on them."""

Descriptive = Literal["aliases", "description", "category", "promised_days", "legal_days", "response_specs"]
DESCRIPTIVE: tuple[Descriptive, ...] = get_args(Descriptive)
"""Item attributes added after 2026.11-dev: the original items may gain these, and nothing else."""

PATTERN_EXAMPLES = {
    ("CSYXZMBF0001", "original_certificate_number"): ("P440123456", "P44012345"),
    ("CSYXZMHY0001", "certificate_number"): ("P440123456", "4401234567"),
    ("XLZSCX000001", "certificate_number"): ("102851202105000123", "10285120210500012X"),
    ("XWZSCX000001", "certificate_number"): ("1028542021000123", "102854202100012"),
    ("BDCDJZLCX001", "unit_number"): ("320213001001GB00001F00010001", "320213001001gb00001f00010001"),
    ("BDCDYDJ00001", "unit_number"): ("320213001001GB00001F00010001", "320213001001GB00001F0001000"),
    ("QYBGDJ000001", "change_items"): ("NAME,DOMICILE,BUSINESS_SCOPE", "NAME,,DOMICILE"),
    ("JSZBHL000001", "licence_file_number"): ("320200123456", "32020012345A"),
    ("JSRXXHY00001", "licence_file_number"): ("320200123456", "3202001234567"),
}
"""Per patterned field: a value the pattern accepts and one it refuses."""

SAMPLE = {
    catalogue_pb2.FIELD_TYPE_STRING: "测试值",
    catalogue_pb2.FIELD_TYPE_CITIZEN_ID: "44030419900307123X",
    catalogue_pb2.FIELD_TYPE_USCC: "91350100M000100Y43",
    catalogue_pb2.FIELD_TYPE_REGION_CODE: "320200",
    catalogue_pb2.FIELD_TYPE_DATE: "2026-01-01",
    catalogue_pb2.FIELD_TYPE_INTEGER: "12",
    catalogue_pb2.FIELD_TYPE_PHONE: "13800138000",
}
"""A valid value of each field type (ENUM fields take an allowed value, patterned fields their example)."""

APPLICANT_IDS = {
    exchange_pb2.APPLICANT_KIND_PERSON: "320213198511200025",
    exchange_pb2.APPLICANT_KIND_ENTERPRISE: "91440300MA5G2K7P5H",
}


def original_attributes(item: CatalogueItem) -> str:
    """The item without the attributes added after 2026.11-dev, as canonical JSON."""
    copy = CatalogueItem()
    copy.CopyFrom(item)
    for name in DESCRIPTIVE:
        copy.ClearField(name)
    for spec in copy.fields:
        spec.ClearField("description")
    as_dict = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    return json.dumps(as_dict, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def raw_catalogue() -> catalogue_pb2.Catalogue:
    """The embedded file as a message, with the attributes ``Catalogue`` does not keep (revision)."""
    text = (resources.files("tongban.core") / "data" / "catalogue.json").read_text(encoding="utf-8")
    msg = catalogue_pb2.Catalogue()
    json_format.Parse(text, msg)
    return msg


# --------------------------------------------------------------------------- the catalogue as a whole


def test_version_and_revision() -> None:
    msg = raw_catalogue()
    assert msg.version == "2026.12"
    assert msg.revision == 1
    assert CATALOGUE.version == "2026.12"


def test_at_least_30_items_with_unique_codes() -> None:
    assert len(CATALOGUE) >= 30
    assert len(set(IDS)) == len(IDS) == len(raw_catalogue().items)
    for code in IDS:
        assert re.fullmatch(r"[0-9A-Z]{10,36}", code), code


def test_every_category_has_items() -> None:
    by_category: dict[str, list[str]] = {}
    for item in ITEMS:
        by_category.setdefault(item.category, []).append(item.code)
    assert set(by_category) == CATEGORIES
    assert len(by_category["公积金"]) >= 3


def test_housing_fund_items_are_found_by_their_common_word() -> None:
    """``tongban catalogue search 公积金`` must find every 公积金 item from its name or aliases."""
    for item in ITEMS:
        if item.category == "公积金":
            assert any("公积金" in text for text in (item.name, *item.aliases)), item.code


def test_original_items_keep_their_attributes() -> None:
    assert CATALOGUE.codes()[: len(ORIGINAL_DIGESTS)] == tuple(ORIGINAL_DIGESTS)
    for code, digest in ORIGINAL_DIGESTS.items():
        item = CATALOGUE.get(code)
        assert item is not None, code
        attributes = original_attributes(item)
        assert hashlib.sha256(attributes.encode()).hexdigest() == digest, f"{code} changed: {attributes}"


# --------------------------------------------------------------------------- each item


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_item_is_described(item: CatalogueItem) -> None:
    assert item.name and item.name_en and item.description and item.provider_department
    assert item.category in CATEGORIES
    assert item.applicant_kind in APPLICANT_IDS
    assert item.handling_mode != catalogue_pb2.HANDLING_MODE_UNSPECIFIED
    assert item.share_attribute in (
        exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL,
        exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
    )
    assert re.fullmatch(r"L[1-4]", item.data_grade)
    if item.sensitive:
        assert item.data_grade == "L4"


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_aliases(item: CatalogueItem) -> None:
    assert item.aliases
    for alias in item.aliases:
        assert alias.strip() == alias and alias, item.code
        assert alias != item.name
    assert len(set(item.aliases)) == len(item.aliases)


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_time_limits(item: CatalogueItem) -> None:
    if item.promised_days and item.legal_days:
        assert item.promised_days <= item.legal_days
    if item.handling_mode == catalogue_pb2.HANDLING_MODE_QUERY:
        # A data check is answered at once, and takes no Submit to deliver.
        assert item.promised_days == item.legal_days == 0
        assert not item.HasField("delivery")
    else:
        assert item.delivery.max_attempts > 0
        assert item.delivery.time_to_live.ToTimedelta() > datetime.timedelta(0)


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_fields(item: CatalogueItem) -> None:
    names = [spec.name for spec in item.fields]
    assert len(set(names)) == len(names)
    for spec in item.fields:
        where = f"{item.code}.{spec.name}"
        assert spec.label and spec.description, where
        assert spec.type != catalogue_pb2.FIELD_TYPE_UNSPECIFIED, where
        if spec.type in (catalogue_pb2.FIELD_TYPE_CITIZEN_ID, catalogue_pb2.FIELD_TYPE_PHONE):
            assert spec.personal, f"{where} holds an ID number or phone number"
        if "姓名" in spec.label or "地址" in spec.label:
            assert spec.personal, f"{where} holds a name or an address"
        if spec.type == catalogue_pb2.FIELD_TYPE_ENUM:
            assert spec.allowed_values, where
            assert len(set(spec.allowed_values)) == len(spec.allowed_values), where
            if spec.max_length:
                assert all(len(v) <= spec.max_length for v in spec.allowed_values), where
        if spec.min_length:
            assert spec.max_length and spec.min_length <= spec.max_length, where


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_response_specs(item: CatalogueItem) -> None:
    assert [spec.name for spec in item.response_specs] == list(item.response_fields)
    for spec in item.response_specs:
        where = f"{item.code} response {spec.name}"
        assert spec.label and spec.description, where
        assert spec.type != catalogue_pb2.FIELD_TYPE_UNSPECIFIED, where
        assert not spec.required, where
        if spec.type == catalogue_pb2.FIELD_TYPE_ENUM:
            assert spec.allowed_values, where


def test_every_pattern_has_examples() -> None:
    patterned = {
        (item.code, spec.name): spec.pattern for item in ITEMS for spec in item.fields if spec.pattern
    }
    assert set(patterned) == set(PATTERN_EXAMPLES)
    for key, pattern in patterned.items():
        good, bad = PATTERN_EXAMPLES[key]
        assert re.fullmatch(pattern, good), key
        assert not re.fullmatch(pattern, bad), key


def sample_value(item: CatalogueItem, spec: catalogue_pb2.FieldSpec) -> str:
    if spec.pattern:
        return PATTERN_EXAMPLES[(item.code, spec.name)][0]
    if spec.type == catalogue_pb2.FIELD_TYPE_ENUM:
        return spec.allowed_values[-1]
    return SAMPLE[spec.type]


@pytest.mark.parametrize("item", ITEMS, ids=IDS)
def test_a_complete_form_is_valid(item: CatalogueItem) -> None:
    """Every field filled with a value of its type and format: the catalogue's own checks accept it,
    and each value also meets the field's length bounds and pattern."""
    fields = {spec.name: sample_value(item, spec) for spec in item.fields}
    for spec in item.fields:
        value = fields[spec.name]
        assert len(value) >= spec.min_length and (not spec.max_length or len(value) <= spec.max_length)
        assert not spec.pattern or re.fullmatch(spec.pattern, value)
    request = exchange_pb2.ServiceRequest(
        service_code=item.code,
        target_region="320200",
        applicant=exchange_pb2.Applicant(kind=item.applicant_kind, id_no=APPLICANT_IDS[item.applicant_kind]),
        fields=fields,
        governance=exchange_pb2.Governance(
            purpose_code="KSTB_CASE_HANDLING",
            purpose_text="跨省通办窗口受理",
            legal_basis=exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY,
            legal_reference="国办发〔2020〕35号",
            approval_reference="SZ-APPROVAL-2026-0001",
            sensitive=item.sensitive,
            declared_fields=list(item.response_fields),
        ),
    )
    assert validate_request(CATALOGUE, request, today=TODAY).code == item.code
