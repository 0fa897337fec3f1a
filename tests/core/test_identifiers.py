"""Tests of tongban.core.identifiers: golden vectors (tests/vectors/identifiers.json), masks and properties.

The check characters of the valid vectors are re-verified here with small reference computations written
independently of the module (ISO 7064 in its recursive "validate" form rather than the module's
weighted-sum "compute" form), so the vectors are not circular.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tongban.core.identifiers import (
    KNOWN_REGIONS,
    InvalidIdentifier,
    check_citizen_id,
    check_elicence_id,
    check_phone,
    check_region_code,
    check_uscc,
    citizen_id_check_char,
    mask_citizen_id,
    mask_identifier,
    mask_name,
    mask_phone,
    region_parent,
    uscc_check_char,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "identifiers.json").read_text(encoding="utf-8")
)

CHECKERS: dict[str, Callable[[str], str]] = {
    "citizen_id": check_citizen_id,
    "uscc": check_uscc,
    "region": check_region_code,
    "elicence": check_elicence_id,
}

# Independent of the module on purpose.
_PROVINCES = [
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65",
    "71", "81", "82", "83", "91",
]  # fmt: skip
_USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_ALNUM36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _ref_citizen_ok(value: str) -> bool:
    """ISO 7064 MOD 11-2 validation, pure recursive form: the whole string reduces to 1."""
    p = 0
    for ch in value.upper():
        p = (p * 2 + (10 if ch == "X" else int(ch))) % 11
    return p == 1


def _ref_uscc_ok(value: str) -> bool:
    """GB 32100 validation: sum of value * 3**(i-1) over the body, plus the check value, is 0 mod 31."""
    body = sum(_USCC_CHARSET.index(ch) * 3**i for i, ch in enumerate(value[:17]))
    return (body + _USCC_CHARSET.index(value[17])) % 31 == 0


def _ref_mod37_36_ok(data: str) -> bool:
    """ISO 7064 MOD 37,36 validation: running the hybrid recursion over data+check leaves 1."""
    p = 36
    for i, ch in enumerate(data):
        s = (p + _ALNUM36.index(ch)) % 36 or 36
        if i == len(data) - 1:
            return s == 1
        p = s * 2 % 37
    return False


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [f"{i}:{item.get('note', '')}" for i, item in enumerate(items)]


def _cases(kind: str, validity: str) -> Any:
    items = VECTORS[f"{kind}_{validity}"]
    return pytest.mark.parametrize("item", items, ids=_ids(items))


# --------------------------------------------------------------------------- vectors themselves


def test_vectors_include_domain_examples() -> None:
    def values(key: str) -> set[str]:
        return {item["value"] for item in VECTORS[key]}

    assert {"44030419900307123X", "320213198511200025", "370202200101010456"} <= values("citizen_id_valid")
    assert {"440304199003071231", "510107196602290883", "44030419901307123X"} <= values("citizen_id_invalid")
    assert {"91350100M000100Y43", "91440300MA5G2K7P5H", "11100000000013338W"} <= values("uscc_valid")
    assert {"91350100M000100Y4Z", "91440300MA5G2K7P5I"} <= values("uscc_invalid")
    assert "1.2.156.3005.2.11100000000013338W009.11330105002500287C.2025052201.002.0" in values(
        "elicence_valid"
    )
    assert set(KNOWN_REGIONS) <= values("region_valid")


def test_valid_vectors_pass_the_reference_computations() -> None:
    for item in VECTORS["citizen_id_valid"]:
        assert _ref_citizen_ok(item["value"]), item
    for item in VECTORS["uscc_valid"]:
        assert _ref_uscc_ok(item["value"].upper()), item
    for item in VECTORS["elicence_valid"]:
        parts = item["value"].upper().split(".")
        # The check covers the parts after the 1.2.156.3005.2 arc, dots removed.
        assert _ref_mod37_36_ok("".join(parts[5:])), item


def test_reference_rejects_domain_bad_checks() -> None:
    assert not _ref_citizen_ok("440304199003071231")
    assert _ref_citizen_ok("510107196602290883")  # check right, date impossible
    assert not _ref_uscc_ok("91350100M000100Y44")


# --------------------------------------------------------------------------- table-driven


@pytest.mark.parametrize("kind", sorted(CHECKERS))
def test_every_kind_has_vectors(kind: str) -> None:
    assert VECTORS[f"{kind}_valid"]
    assert VECTORS[f"{kind}_invalid"]


@_cases("citizen_id", "valid")
def test_citizen_id_valid(item: dict[str, Any]) -> None:
    assert check_citizen_id(item["value"]) == item.get("normalised", item["value"])


@_cases("citizen_id", "invalid")
def test_citizen_id_invalid(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        check_citizen_id(item["value"])
    assert item["reason_contains"] in excinfo.value.reason


@_cases("uscc", "valid")
def test_uscc_valid(item: dict[str, Any]) -> None:
    expected = item.get("normalised", item["value"])
    assert check_uscc(item["value"]) == expected
    assert check_uscc(item["value"], strict=False) == expected


@_cases("uscc", "invalid")
def test_uscc_invalid(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        check_uscc(item["value"])
    assert item["reason_contains"] in excinfo.value.reason


@_cases("region", "valid")
def test_region_valid(item: dict[str, Any]) -> None:
    assert check_region_code(item["value"]) == item["value"]


@_cases("region", "invalid")
def test_region_invalid(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        check_region_code(item["value"])
    assert item["reason_contains"] in excinfo.value.reason


@_cases("elicence", "valid")
def test_elicence_valid(item: dict[str, Any]) -> None:
    assert check_elicence_id(item["value"]) == item.get("normalised", item["value"])


@_cases("elicence", "invalid")
def test_elicence_invalid(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        check_elicence_id(item["value"])
    assert item["reason_contains"] in excinfo.value.reason


def _all_invalid() -> list[tuple[str, str]]:
    return [(kind, item["value"]) for kind in CHECKERS for item in VECTORS[f"{kind}_invalid"]]


@pytest.mark.parametrize(("kind", "value"), _all_invalid())
def test_messages_never_contain_the_value(kind: str, value: str) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        CHECKERS[kind](value)
    exc = excinfo.value
    texts = [str(exc), exc.reason, repr(exc)]
    # No 6-character window of the value (so neither the value nor its area, date or body) leaks.
    windows = {value[i : i + 6] for i in range(len(value) - 5)}
    for text in texts:
        assert not any(w in text for w in windows), (text, kind)
    assert isinstance(exc, ValueError)


def test_phone_messages_never_contain_the_value() -> None:
    for value in ["12812345678", "1381234567", "1381234567a"]:
        with pytest.raises(InvalidIdentifier) as excinfo:
            check_phone(value)
        assert value[:6] not in str(excinfo.value)


# --------------------------------------------------------------------------- citizen ID specifics


def test_citizen_id_check_char_domain_examples() -> None:
    assert citizen_id_check_char("44030419900307123") == "X"
    assert citizen_id_check_char("32021319851120002") == "5"
    assert citizen_id_check_char("37020220010101045") == "6"


@pytest.mark.parametrize("bad", ["4403041990030712", "440304199003071234", "4403041990030712X", ""])
def test_citizen_id_check_char_rejects_bad_bodies(bad: str) -> None:
    with pytest.raises(InvalidIdentifier):
        citizen_id_check_char(bad)


def test_citizen_id_today_parameter() -> None:
    # 440606202412315673 is born 2024-12-31.
    assert check_citizen_id("440606202412315673", today=datetime.date(2024, 12, 31)) == "440606202412315673"
    with pytest.raises(InvalidIdentifier, match="future"):
        check_citizen_id("440606202412315673", today=datetime.date(2024, 12, 30))


def test_citizen_id_not_a_string() -> None:
    with pytest.raises(InvalidIdentifier):
        check_citizen_id(440304199003071230)  # type: ignore[arg-type]


_PAST = datetime.date(2024, 12, 31)


@st.composite
def _citizen_bodies(draw: st.DrawFn) -> str:
    province = draw(st.sampled_from(_PROVINCES))
    area_rest = draw(st.from_regex(r"[0-9]{4}", fullmatch=True))
    birth = draw(st.dates(min_value=datetime.date(1900, 1, 1), max_value=_PAST))
    sequence = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    return f"{province}{area_rest}{birth:%Y%m%d}{sequence}"


@given(body=_citizen_bodies(), wrong_index=st.integers(min_value=0, max_value=9))
def test_citizen_id_check_char_property(body: str, wrong_index: int) -> None:
    check = citizen_id_check_char(body)
    assert _ref_citizen_ok(body + check)
    assert check_citizen_id(body + check, today=_PAST) == body + check
    if check == "X":
        assert check_citizen_id(body + "x", today=_PAST) == body + "X"
    others = [c for c in "0123456789X" if c != check]
    for wrong in [others[wrong_index], *others]:
        with pytest.raises(InvalidIdentifier, match="check character mismatch"):
            check_citizen_id(body + wrong, today=_PAST)


# --------------------------------------------------------------------------- USCC specifics


def test_uscc_check_char_domain_examples() -> None:
    assert uscc_check_char("91350100M000100Y4") == "3"
    assert uscc_check_char("91440300MA5G2K7P5") == "H"
    assert uscc_check_char("11100000000013338") == "W"


def test_uscc_non_strict_accepts_wrong_check_only() -> None:
    assert check_uscc("91350100M000100Y4A", strict=False) == "91350100M000100Y4A"
    assert check_uscc("91350100m000100y4a", strict=False) == "91350100M000100Y4A"
    with pytest.raises(InvalidIdentifier, match="check character"):
        check_uscc("91350100M000100Y4A", strict=True)
    for bad, reason in [
        # Z is not in the GB 32100 charset, so docs/domain.md's invalid example fails even when not strict.
        ("91350100M000100Y4Z", "invalid character"),
        ("91440300MA5G2K7P5I", "invalid character"),
        ("91A40300MA5G2K7P5R", "region"),
        ("91440300MA5G2K7P5", "not 18"),
    ]:
        with pytest.raises(InvalidIdentifier, match=reason):
            check_uscc(bad, strict=False)


@given(body=st.text(alphabet=_USCC_CHARSET, min_size=17, max_size=17))
def test_uscc_check_char_property(body: str) -> None:
    check = uscc_check_char(body)
    assert _ref_uscc_ok(body + check)


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    ("code", "parent"),
    [
        ("440304001001", "440304001"),
        ("440304001", "440304"),
        ("441900003", "441900"),
        ("440304", "440300"),
        ("320213", "320200"),
        ("440300", "440000"),
        ("110101", "110100"),
        ("110100", "110000"),
        ("110000", None),
    ],
)
def test_region_parent(code: str, parent: str | None) -> None:
    assert region_parent(code) == parent


def test_region_parent_chain_ends_at_province() -> None:
    chain = []
    code: str | None = "440304001001"
    while code is not None:
        chain.append(code)
        code = region_parent(code)
    assert chain == ["440304001001", "440304001", "440304", "440300", "440000"]


def test_region_parent_rejects_invalid() -> None:
    with pytest.raises(InvalidIdentifier):
        region_parent("990000")


def test_known_regions() -> None:
    assert KNOWN_REGIONS["440300"] == "深圳市"
    assert KNOWN_REGIONS["440304"] == "福田区"
    assert KNOWN_REGIONS["440606"] == "顺德区"
    assert KNOWN_REGIONS["510100"] == "成都市"
    assert len(KNOWN_REGIONS) == 16
    for code in KNOWN_REGIONS:
        assert check_region_code(code) == code
    with pytest.raises(TypeError):
        KNOWN_REGIONS["999999"] = "x"  # type: ignore[index]


# --------------------------------------------------------------------------- phone


@pytest.mark.parametrize("value", ["13812345678", "19912345678", "15000000000"])
def test_phone_valid(value: str) -> None:
    assert check_phone(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("12812345678", "prefix"),
        ("23812345678", "prefix"),
        ("1381234567", "not 11"),
        ("138123456789", "not 11"),
        ("1381234567a", "digits"),
        ("+8613812345", "digits"),
        ("", "not 11"),
    ],
)
def test_phone_invalid(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier, match=reason):
        check_phone(value)


# --------------------------------------------------------------------------- masks


def test_mask_citizen_id() -> None:
    assert mask_citizen_id("44030419900307123X") == "4403**********123X"
    assert len(mask_citizen_id("44030419900307123X")) == 18
    # Wrong length: falls back to the generic mask and never raises.
    assert mask_citizen_id("4403041990030712") == "4403********0712"
    assert mask_citizen_id("") == ""


def test_mask_name() -> None:
    assert mask_name("张三") == "张*"
    assert mask_name("张三丰") == "张**"
    assert mask_name("欧阳娜娜") == "欧阳**"
    assert mask_name("欧阳修") == "欧阳*"
    assert mask_name("欧阳") == "欧*"
    assert mask_name("王") == "*"
    assert mask_name("") == ""


def test_mask_phone() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("1381234567") == "13******67"


def test_mask_identifier() -> None:
    assert mask_identifier("91440300MA5G2K7P5H") == "9144**********7P5H"
    assert mask_identifier("1234567890123456") == "1234********3456"
    assert mask_identifier("12345678") == "12****78"
    assert mask_identifier("1234567") == "*******"
    assert mask_identifier("") == ""


@given(value=st.text(min_size=0, max_size=40))
def test_mask_identifier_hides_at_least_half(value: str) -> None:
    masked = mask_identifier(value)
    assert len(masked) == len(value)
    assert masked.count("*") >= len(value) / 2
