"""The embedded catalogue and request validation, driven by tests/vectors/catalogue_requests.json."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tongban.core import identifiers
from tongban.core.catalogue import Catalogue, response_projection, validate_request
from tongban.core.errors import ConfigError, InvalidRequest
from tongban.v1 import catalogue_pb2, exchange_pb2

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "catalogue_requests.json").read_text(encoding="utf-8")
)
BY_CODE = {v["service_code"]: v for v in VECTORS}
TODAY = datetime.date(2026, 11, 22)
CATALOGUE_SENSITIVE = {item.code: item.sensitive for item in Catalogue.load()}
KINDS = {"person": exchange_pb2.APPLICANT_KIND_PERSON, "enterprise": exchange_pb2.APPLICANT_KIND_ENTERPRISE}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


def build(vector: dict[str, Any]) -> exchange_pb2.ServiceRequest:
    """A valid ServiceRequest for a vector, under statutory duty."""
    return exchange_pb2.ServiceRequest(
        service_code=vector["service_code"],
        target_region=vector["target_region"],
        applicant=exchange_pb2.Applicant(
            kind=KINDS[vector["applicant"]["kind"]], id_no=vector["applicant"]["id_no"]
        ),
        fields=vector["fields"],
        governance=exchange_pb2.Governance(
            purpose_code="KSTB_CASE_HANDLING",
            purpose_text="跨省通办窗口受理",
            legal_basis=exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY,
            legal_reference="国办发〔2020〕35号",
            approval_reference="SZ-APPROVAL-2026-0001",
            sensitive=CATALOGUE_SENSITIVE.get(vector["service_code"], False),
        ),
        idempotency_key="test-0001",
    )


def violations_of(catalogue: Catalogue, request: exchange_pb2.ServiceRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(catalogue, request, today=TODAY)
    return caught.value


# --------------------------------------------------------------------------- the catalogue itself


def test_embedded_catalogue_loads(catalogue: Catalogue) -> None:
    assert catalogue.version == "2026.12"
    assert len(catalogue) >= 7
    assert len(set(catalogue.codes())) == len(catalogue.codes())
    for item in catalogue:
        assert re.fullmatch(r"[0-9A-Z]{10,36}", item.code)
        assert item.name and item.name_en and item.provider_department and item.data_grade
        assert item.response_fields
        assert item.share_attribute in (
            exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL,
            exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
        )
        for spec in item.fields:
            assert spec.type != catalogue_pb2.FIELD_TYPE_UNSPECIFIED
            if spec.type in (catalogue_pb2.FIELD_TYPE_CITIZEN_ID, catalogue_pb2.FIELD_TYPE_PHONE):
                assert spec.personal, f"{item.code}.{spec.name} holds personal data"
    medical = catalogue.get("YDJYDJBA0001")
    assert medical is not None and medical.sensitive
    assert catalogue.get("NOSUCHITEM01") is None


def test_every_vector_names_a_distinct_catalogue_item(catalogue: Catalogue) -> None:
    # The vectors cover the items the demo back ends answer (the first 8), not the whole catalogue.
    codes = [v["service_code"] for v in VECTORS]
    assert len(set(codes)) == len(codes)
    assert set(codes) <= set(catalogue.codes())


def test_load_from_a_path_equals_embedded(catalogue: Catalogue, tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json_format.MessageToJson(catalogue.to_proto()), encoding="utf-8")
    again = Catalogue.load(str(path))
    assert again.codes() == catalogue.codes()
    assert again.to_proto() == catalogue.to_proto()


def _item(code: str, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "code": code,
        "name": "测试事项",
        "applicant_kind": "APPLICANT_KIND_PERSON",
        "fields": [{"name": "kind_of_thing", "type": "FIELD_TYPE_ENUM", "allowed_values": ["A", "B"]}],
        "response_fields": ["answer"],
    }
    item.update(overrides)
    return item


BAD_CATALOGUES: list[tuple[str, list[dict[str, Any]], str]] = [
    ("duplicate code", [_item("TESTITEM0001"), _item("TESTITEM0001")], "TESTITEM0001"),
    ("lowercase code", [_item("testitem0001")], "testitem0001"),
    ("short code", [_item("ABC123")], "ABC123"),
    ("field without type", [_item("TESTITEM0002", fields=[{"name": "x"}])], "TESTITEM0002"),
    (
        "enum without values",
        [_item("TESTITEM0003", fields=[{"name": "x", "type": "FIELD_TYPE_ENUM"}])],
        "TESTITEM0003",
    ),
    ("no response fields", [_item("TESTITEM0004", response_fields=[])], "TESTITEM0004"),
    (
        "no applicant kind",
        [_item("TESTITEM0005", applicant_kind="APPLICANT_KIND_UNSPECIFIED")],
        "TESTITEM0005",
    ),
    (
        "field declared twice",
        [_item("TESTITEM0006", fields=[{"name": "x", "type": "FIELD_TYPE_STRING"}] * 2)],
        "TESTITEM0006",
    ),
]


@pytest.mark.parametrize(
    ("items", "names"), [(b[1], b[2]) for b in BAD_CATALOGUES], ids=[b[0] for b in BAD_CATALOGUES]
)
def test_bad_catalogue_is_a_config_error_naming_the_item(
    tmp_path: Path, items: list[dict[str, Any]], names: str
) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"version": "t", "items": items}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Catalogue.load(path)
    assert names in str(caught.value)


@pytest.mark.parametrize("text", ["not json", '{"items": [{"no_such_key": 1}]}'])
def test_unparseable_catalogue_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        Catalogue.load(path)


def test_missing_catalogue_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Catalogue.load(tmp_path / "absent.json")


# --------------------------------------------------------------------------- valid requests


@pytest.mark.parametrize("vector", VECTORS, ids=[v["service_code"] for v in VECTORS])
def test_vector_request_is_valid(catalogue: Catalogue, vector: dict[str, Any]) -> None:
    item = validate_request(catalogue, build(vector), today=TODAY)
    assert item.code == vector["service_code"]
    assert set(vector["expect"]) <= set(item.response_fields)
    required = {spec.name for spec in item.fields if spec.required}
    assert required <= set(vector["fields"])


def test_consent_with_reference_and_declared_subset_is_valid(catalogue: Catalogue) -> None:
    request = build(BY_CODE["SBJFJLCX0001"])
    request.governance.legal_basis = exchange_pb2.LEGAL_BASIS_CONSENT
    request.governance.consent_reference = "CONSENT-2026-000123"
    request.governance.declared_fields.extend(["total_months", "status"])
    validate_request(catalogue, request, today=TODAY)


def test_lowercase_identifiers_are_accepted(catalogue: Catalogue) -> None:
    request = build(BY_CODE["NZQYSLDJ0001"])
    request.applicant.id_no = request.applicant.id_no.lower()
    validate_request(catalogue, request, today=TODAY)


def test_optional_fields_may_be_left_out(catalogue: Catalogue) -> None:
    for vector in VECTORS:
        item = catalogue.get(vector["service_code"])
        assert item is not None
        request = build(vector)
        for spec in item.fields:
            if not spec.required:
                request.fields.pop(spec.name, None)
        validate_request(catalogue, request, today=TODAY)


# --------------------------------------------------------------------------- invalid requests


Mutation = Callable[[exchange_pb2.ServiceRequest], None]


def _set_id(value: str) -> Mutation:
    def mutate(r: exchange_pb2.ServiceRequest) -> None:
        r.applicant.id_no = value

    return mutate


def _set_field(name: str, value: str) -> Mutation:
    def mutate(r: exchange_pb2.ServiceRequest) -> None:
        r.fields[name] = value

    return mutate


def _drop_field(name: str) -> Mutation:
    def mutate(r: exchange_pb2.ServiceRequest) -> None:
        del r.fields[name]

    return mutate


def _set(path: str, value: Any) -> Mutation:
    def mutate(r: exchange_pb2.ServiceRequest) -> None:
        *parents, last = path.split(".")
        target: Any = r
        for part in parents:
            target = getattr(target, part)
        setattr(target, last, value)

    return mutate


def _consent_without_reference(r: exchange_pb2.ServiceRequest) -> None:
    r.governance.legal_basis = exchange_pb2.LEGAL_BASIS_CONSENT


def _declare(*names: str) -> Mutation:
    def mutate(r: exchange_pb2.ServiceRequest) -> None:
        r.governance.declared_fields.extend(names)

    return mutate


P, E = "SBJFJLCX0001", "NZQYSLDJ0001"

# (case id, vector code, mutation, the one expected violation path, the bad value that must not leak)
INVALID: list[tuple[str, str, Mutation, str, str | None]] = [
    ("id check character", P, _set_id("440304199003071231"), "request.applicant.id_no", "440304199003071231"),
    ("id impossible date", P, _set_id("510107196602290883"), "request.applicant.id_no", "510107196602290883"),
    ("id month 13", P, _set_id("44030419901307123X"), "request.applicant.id_no", "44030419901307123X"),
    ("id born in future", P, _set_id("440304209901010013"), "request.applicant.id_no", "440304209901010013"),
    ("id too short", P, _set_id("4403041990030712"), "request.applicant.id_no", "4403041990030712"),
    ("id missing", P, _set_id(""), "request.applicant.id_no", None),
    ("uscc letter Z", E, _set_id("91350100M000100Y4Z"), "request.applicant.id_no", "91350100M000100Y4Z"),
    (
        "uscc check character",
        E,
        _set_id("91350100M000100Y44"),
        "request.applicant.id_no",
        "91350100M000100Y44",
    ),
    ("uscc letter I", E, _set_id("91440300MA5G2K7P5I"), "request.applicant.id_no", "91440300MA5G2K7P5I"),
    (
        "person id for enterprise",
        E,
        _set_id("44030419900307123X"),
        "request.applicant.id_no",
        "44030419900307123X",
    ),
    (
        "kind mismatch",
        P,
        _set("applicant.kind", exchange_pb2.APPLICANT_KIND_ENTERPRISE),
        "request.applicant.kind",
        None,
    ),
    (
        "kind missing",
        P,
        _set("applicant.kind", exchange_pb2.APPLICANT_KIND_UNSPECIFIED),
        "request.applicant.kind",
        None,
    ),
    ("bad phone", P, _set("applicant.phone", "23812345678"), "request.applicant.phone", "23812345678"),
    ("name too long", P, _set("applicant.name", "王" * 65), "request.applicant.name", "王" * 65),
    ("no target region", P, _set("target_region", ""), "request.target_region", None),
    ("target region 4 digits", P, _set("target_region", "3202"), "request.target_region", "3202"),
    ("target region 9 digits", P, _set("target_region", "320213001"), "request.target_region", "320213001"),
    ("target region province 99", P, _set("target_region", "990000"), "request.target_region", "990000"),
    (
        "missing required field",
        "YDJYDJBA0001",
        _drop_field("treatment_region"),
        "request.fields[treatment_region]",
        None,
    ),
    (
        "blank required field",
        "YDJYDJBA0001",
        _set_field("treatment_region", "   "),
        "request.fields[treatment_region]",
        None,
    ),
    ("unknown field", P, _set_field("favourite_colour", "blue"), "request.fields[favourite_colour]", "blue"),
    (
        "oversized field",
        E,
        _set_field("branch_name", "企" * 10_000),
        "request.fields[branch_name]",
        "企" * 10_000,
    ),
    (
        "oversized default-length field",
        "YLDYZGRZ0001",
        _set_field("certification_method", "A" * 10_000),
        "request.fields[certification_method]",
        "A" * 10_000,
    ),
    ("bad enum", P, _set_field("insurance_type", "999"), "request.fields[insurance_type]", "999"),
    (
        "bad enum category",
        "YDJYDJBA0001",
        _set_field("filing_category", "LOTTERY"),
        "request.fields[filing_category]",
        "LOTTERY",
    ),
    (
        "date not a day",
        P,
        _set_field("period_start", "2026-02-30"),
        "request.fields[period_start]",
        "2026-02-30",
    ),
    (
        "date wrong form",
        P,
        _set_field("period_end", "2026/10/31"),
        "request.fields[period_end]",
        "2026/10/31",
    ),
    (
        "date full-width",
        P,
        _set_field("period_end", "２０２６-10-31"),
        "request.fields[period_end]",
        "２０２６-10-31",
    ),
    (
        "integer with letters",
        "YLDYZGRZ0001",
        _set_field("certification_year", "20x6"),
        "request.fields[certification_year]",
        "20x6",
    ),
    (
        "region field",
        "YDJYDJBA0001",
        _set_field("treatment_region", "4403000"),
        "request.fields[treatment_region]",
        "4403000",
    ),
    (
        "citizen id field",
        E,
        _set_field("legal_representative_id", "440304199003071231"),
        "request.fields[legal_representative_id]",
        "440304199003071231",
    ),
    (
        "phone field",
        "GJJDWKH00001",
        _set_field("contact_phone", "1381234567"),
        "request.fields[contact_phone]",
        "1381234567",
    ),
    ("control character", E, _set_field("branch_name", "分公司\x00"), "request.fields[branch_name]", None),
    ("no purpose", P, _set("governance.purpose_code", ""), "request.governance.purpose_code", None),
    (
        "bad purpose",
        P,
        _set("governance.purpose_code", "kstb case"),
        "request.governance.purpose_code",
        "kstb case",
    ),
    (
        "purpose newline",
        P,
        _set("governance.purpose_code", "KSTB_CASE\n"),
        "request.governance.purpose_code",
        None,
    ),
    (
        "consent without reference",
        P,
        _consent_without_reference,
        "request.governance.consent_reference",
        None,
    ),
    (
        "declared field not offered",
        P,
        _declare("records", "home_address"),
        "request.governance.declared_fields",
        "home_address",
    ),
]


@pytest.mark.parametrize(
    ("code", "mutate", "path", "bad_value"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_request_names_the_exact_field(
    catalogue: Catalogue, code: str, mutate: Mutation, path: str, bad_value: str | None
) -> None:
    request = build(BY_CODE[code])
    mutate(request)
    error = violations_of(catalogue, request)
    assert [v.field for v in error.violations] == [path]
    assert error.violations[0].description.endswith(".")
    if bad_value is not None:
        assert bad_value not in str(error)
        for violation in error.violations:
            assert bad_value not in violation.description


@pytest.mark.parametrize("code", ["", "NOSUCHITEM0001", "sbjfjlcx0001"])
def test_unknown_service_code_stops_there(catalogue: Catalogue, code: str) -> None:
    request = build(BY_CODE[P])
    request.service_code = code
    request.applicant.id_no = "440304199003071231"  # also wrong, but not reported
    error = violations_of(catalogue, request)
    assert [v.field for v in error.violations] == ["request.service_code"]


def test_all_violations_are_reported_together(catalogue: Catalogue) -> None:
    request = build(BY_CODE["YDJYDJBA0001"])
    request.target_region = "32020"
    request.applicant.id_no = "440304199003071231"
    request.applicant.phone = "0000"
    del request.fields["valid_from"]
    request.fields["filing_category"] = "LOTTERY"
    request.fields["treatment_region"] = "X" * 10_000
    request.fields["favourite_colour"] = "blue"
    request.governance.purpose_code = ""
    request.governance.legal_basis = exchange_pb2.LEGAL_BASIS_CONSENT
    request.governance.declared_fields.append("home_address")
    error = violations_of(catalogue, request)
    assert sorted(v.field for v in error.violations) == sorted(
        [
            "request.target_region",
            "request.applicant.id_no",
            "request.applicant.phone",
            "request.fields[valid_from]",
            "request.fields[filing_category]",
            "request.fields[treatment_region]",
            "request.fields[favourite_colour]",
            "request.governance.purpose_code",
            "request.governance.consent_reference",
            "request.governance.declared_fields",
        ]
    )
    text = " ".join(v.description for v in error.violations) + str(error)
    for secret in ("440304199003071231", "LOTTERY", "X" * 20, "home_address"):
        assert secret not in text


def test_length_is_checked_before_the_validator(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = identifiers.check_citizen_id

    def spy(value: str, *, today: datetime.date | None = None) -> str:
        calls.append(len(value))
        return real(value, today=today)

    monkeypatch.setattr(identifiers, "check_citizen_id", spy)
    request = build(BY_CODE[E])
    request.fields["legal_representative_id"] = "4" * 10_000
    error = violations_of(catalogue, request)
    assert [v.field for v in error.violations] == ["request.fields[legal_representative_id]"]
    assert "18 characters" in error.violations[0].description
    assert 10_000 not in calls


def test_default_max_field_length_is_configurable(catalogue: Catalogue) -> None:
    request = build(BY_CODE["YLDYZGRZ0001"])  # certification_method has no max_length of its own
    request.fields["certification_method"] = "HOME_VISIT"
    validate_request(catalogue, request, today=TODAY)
    with pytest.raises(InvalidRequest) as caught:
        validate_request(catalogue, request, today=TODAY, max_field_length=5)
    assert [v.field for v in caught.value.violations] == ["request.fields[certification_method]"]


def test_birth_date_in_the_future_is_relative_to_today(catalogue: Catalogue) -> None:
    request = build(BY_CODE[P])  # applicant born 1985-11-20
    validate_request(catalogue, request, today=TODAY)
    with pytest.raises(InvalidRequest) as caught:
        validate_request(catalogue, request, today=datetime.date(1985, 11, 19))
    assert [v.field for v in caught.value.violations] == ["request.applicant.id_no"]


def test_uscc_strictness_is_a_policy(catalogue: Catalogue) -> None:
    request = build(BY_CODE[E])
    request.applicant.id_no = "91350100M000100Y44"  # only the check character is wrong
    violations_of(catalogue, request)
    validate_request(catalogue, request, today=TODAY, uscc_strict=False)


def test_a_flood_of_unknown_fields_is_summarised(catalogue: Catalogue) -> None:
    request = build(BY_CODE[P])
    for i in range(1000):
        request.fields[f"extra_{i:04d}"] = "x"
    request.fields["Not A Name!"] = "x"
    error = violations_of(catalogue, request)
    assert 1 < len(error.violations) <= 17
    assert error.violations[-1].field == "request.fields"
    assert "985 more" in error.violations[-1].description


# --------------------------------------------------------------------------- projection


def test_response_projection(catalogue: Catalogue) -> None:
    item = catalogue.get(P)
    assert item is not None
    assert response_projection(item, []) == tuple(item.response_fields)
    assert response_projection(item, ["records", "status", "status", "home_address"]) == ("status", "records")


# --------------------------------------------------------------------------- characters partners may send

TEXT_FIELDS = [
    # (path, service code, the mutation setting the field, identity field)
    ("request.applicant.name", P, lambda v: _set("applicant.name", v), True),
    ("request.fields[branch_name]", E, lambda v: _set_field("branch_name", v), False),
    ("request.governance.purpose_text", P, lambda v: _set("governance.purpose_text", v), False),
    ("request.governance.data_grade", P, lambda v: _set("governance.data_grade", v), True),
    ("request.governance.requester.org_uscc", P, lambda v: _set("governance.requester.org_uscc", v), True),
    (
        "request.governance.requester.department",
        P,
        lambda v: _set("governance.requester.department", v),
        True,
    ),
    (
        "request.governance.requester.operator_digest",
        P,
        lambda v: _set("governance.requester.operator_digest", v),
        True,
    ),
]
CHARACTERS = {
    # name: (character, refused only in identity fields)
    "NUL": ("\x00", False),
    "TAB": ("\t", False),
    "DEL": ("\x7f", False),
    "C1 NEL": ("\x85", False),
    "RLO U+202E": ("\u202e", False),
    "LRI U+2066": ("\u2066", False),
    "RLM U+200F": ("\u200f", False),
    "ALM U+061C": ("\u061c", False),
    "LINE SEPARATOR": ("\u2028", False),
    "noncharacter U+FFFF": ("\uffff", False),
    "ZWSP U+200B": ("\u200b", True),
    "ZWJ U+200D": ("\u200d", True),
    "BOM U+FEFF": ("\ufeff", True),
    "SHY": ("\u00ad", True),
}


@pytest.mark.parametrize(("char", "identity_only"), list(CHARACTERS.values()), ids=list(CHARACTERS))
@pytest.mark.parametrize(("path", "code", "setter", "identity"), TEXT_FIELDS, ids=[f[0] for f in TEXT_FIELDS])
def test_text_fields_refuse_controls_and_bidi_overrides(
    catalogue: Catalogue, path: str, code: str, setter: Any, identity: bool, char: str, identity_only: bool
) -> None:
    """tongban/core/text.py's rule, field by field: one violation on that field, naming the code point,
    never the value; invisible formatting characters only in identity fields (free text keeps emoji
    joiners and the like)."""
    request = build(BY_CODE[code])
    setter(f"王{char}小明")(request)
    if identity_only and not identity:
        validate_request(catalogue, request, today=TODAY)
        return
    error = violations_of(catalogue, request)
    assert [v.field for v in error.violations] == [path]
    assert f"U+{ord(char):04X}" in error.violations[0].description
    assert "小明" not in error.violations[0].description


@pytest.mark.parametrize("name", ["欧阳·娜娜", "Zoë Müller", "ئەخمەت", "阿依古丽·买买提", "O'Brien-Smith"])
def test_real_names_pass(catalogue: Catalogue, name: str) -> None:
    request = build(BY_CODE[P])
    request.applicant.name = name
    validate_request(catalogue, request, today=TODAY)
