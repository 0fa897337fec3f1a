"""Field patterns and minimum lengths: checked when the catalogue loads, enforced on every request."""

from __future__ import annotations

import pytest

from tongban.core.catalogue import Catalogue, validate_request
from tongban.core.errors import ConfigError, InvalidRequest
from tongban.core.field_patterns import MAX_PATTERN_LENGTH, compiled
from tongban.v1 import catalogue_pb2, exchange_pb2

CODE = "TESTPATTERN001"


def catalogue(**spec: object) -> Catalogue:
    """A one-item catalogue whose one field is ``spec``."""
    msg = catalogue_pb2.Catalogue(revision=1)
    item = msg.items.add(
        code=CODE,
        name="测试",
        handling_mode=catalogue_pb2.HANDLING_MODE_QUERY,
        applicant_kind=exchange_pb2.APPLICANT_KIND_PERSON,
        response_fields=["ok"],
        share_attribute=exchange_pb2.SHARE_ATTRIBUTE_UNCONDITIONAL,
    )
    item.fields.add(name="ref", type=catalogue_pb2.FIELD_TYPE_STRING, **spec)  # type: ignore[arg-type]
    return Catalogue.from_proto(msg)


def request(value: str | None) -> exchange_pb2.ServiceRequest:
    req = exchange_pb2.ServiceRequest(service_code=CODE, target_region="320200")
    req.applicant.kind = exchange_pb2.APPLICANT_KIND_PERSON
    req.applicant.id_no = "320213198511200025"
    req.governance.purpose_code = "KSTB_CASE_HANDLING"
    if value is not None:
        req.fields["ref"] = value
    return req


def problem(cat: Catalogue, value: str | None) -> str | None:
    try:
        validate_request(cat, request(value))
    except InvalidRequest as exc:
        [violation] = exc.violations
        assert violation.field == "request.fields[ref]"
        return violation.description
    return None


def test_the_whole_value_must_match_the_pattern() -> None:
    cat = catalogue(pattern=r"[A-Z]{2}-[0-9]{4}")
    assert problem(cat, "SZ-2026") is None
    assert problem(cat, "sz-2026") == r"Must match the pattern [A-Z]{2}-[0-9]{4}."
    # fullmatch: a matching part is not enough
    assert problem(cat, "SZ-2026-extra") is not None
    assert problem(cat, "xSZ-2026") is not None


def test_the_violation_never_quotes_the_value() -> None:
    cat = catalogue(pattern=r"[0-9]{6}")
    secret = "44030419900307123X"
    described = problem(cat, secret)
    assert described is not None and secret not in described


def test_min_length() -> None:
    cat = catalogue(min_length=4, max_length=8)
    assert problem(cat, "abc") == "Value is shorter than 4 characters."
    assert problem(cat, "abcd") is None
    assert problem(cat, "abcdefghi") == "Value is longer than 8 characters."
    assert problem(cat, None) is None  # optional and absent: no length to check


def test_length_is_checked_before_the_pattern() -> None:
    """A value over the limit never reaches its pattern: one violation, about the length."""
    cat = catalogue(pattern=r"[a-z]*x", max_length=16)
    assert problem(cat, "a" * 17) == "Value is longer than 16 characters."
    default = catalogue(pattern=r"[a-z]*x")
    assert problem(default, "a" * 300) == "Value is longer than 256 characters."


def test_a_type_problem_is_reported_instead_of_the_pattern() -> None:
    cat = catalogue(pattern=r"[A-Z]+")
    described = problem(cat, "AB\x00")
    assert described is not None and "pattern" not in described


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(", "not a regular expression"),
        (r"(a)\1", "back-reference"),
        (r"(?=a)a", "look-ahead"),
        (r"(?<!a)b", "look-ahead or look-behind"),
        (r"(a+)+b", "variable repeat inside another"),
        (r"([a-z]{1,5})*", "variable repeat inside another"),
        (r"(a|aa)*c", "alternation repeated"),
        (r"(,(a|,b))*", "alternation repeated"),  # the delimiter also inside: not a delimiter
        (r"\d*\d*\d*\d*\d*x", "more than 4 variable repeats"),
        ("a" * (MAX_PATTERN_LENGTH + 1), "longer than"),
    ],
)
def test_unsafe_or_broken_patterns_fail_the_load(pattern: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        catalogue(pattern=pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"[0-9]{6}",
        r"(\d{3}-)+\d{4}",
        r"[\u4e00-\u9fff]{2,20}",
        r"(?:ab|cd){2}",
        r"[A-Z]{2}\d{4,8}",
        "a|b",
        # a delimited list: each iteration begins with "," and nothing inside can match ","
        r"(NAME|DOMICILE|SHAREHOLDERS)(,(NAME|DOMICILE|SHAREHOLDERS))*",
        r"[A-Z]+(;[A-Z]+)*",
    ],
)
def test_ordinary_patterns_load(pattern: str) -> None:
    assert compiled(pattern).pattern == pattern
    catalogue(pattern=pattern)


def test_min_length_above_max_length_fails_the_load() -> None:
    with pytest.raises(ConfigError, match="min_length is above max_length"):
        catalogue(min_length=9, max_length=8)


def test_response_specs_name_response_fields() -> None:
    msg = catalogue(max_length=8).to_proto()
    msg.items[0].response_specs.add(name="not_offered", type=catalogue_pb2.FIELD_TYPE_STRING)
    with pytest.raises(ConfigError, match="response_specs"):
        Catalogue.from_proto(msg)
