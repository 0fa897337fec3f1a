"""Validation and masking of the identifiers that cross the gateway.

Pure functions, no third-party dependencies. Covers:

* citizen ID numbers (GB 11643-1999, ISO 7064 MOD 11-2 check character);
* unified social credit codes (GB 32100-2015, check modulo 31 over a 31-character alphabet);
* administrative region codes (GB/T 2260 six digits, plus the 9-digit 镇/街道 and 12-digit 村/居委会 levels);
* mainland mobile numbers;
* e-licence identifiers (GB/T 36904, ISO 7064 MOD 37,36 check character);
* masking helpers for logs and audit records.

Every validator raises :class:`InvalidIdentifier`, whose message and ``reason`` never contain the value
(or any part of it): identifiers are personal data.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "CITIZEN_ID_WEIGHTS",
    "COMPOUND_SURNAMES",
    "ELICENCE_PREFIX",
    "KNOWN_REGIONS",
    "PROVINCE_CODES",
    "USCC_CHARSET",
    "InvalidIdentifier",
    "check_citizen_id",
    "check_elicence_id",
    "check_phone",
    "check_region_code",
    "check_uscc",
    "citizen_id_check_char",
    "elicence_check_char",
    "mask_citizen_id",
    "mask_identifier",
    "mask_name",
    "mask_phone",
    "region_parent",
    "uscc_check_char",
]

_DIGITS = frozenset("0123456789")

#: Two-digit province codes (GB/T 2260, plus 71 Taiwan, 81 Hong Kong, 82 Macao, 83 and 91 used by
#: residence permits and foreigners' permanent-residence ID numbers).
PROVINCE_CODES: frozenset[str] = frozenset(
    [str(n) for n in range(11, 16)]
    + [str(n) for n in range(21, 24)]
    + [str(n) for n in range(31, 38)]
    + [str(n) for n in range(41, 47)]
    + [str(n) for n in range(50, 55)]
    + [str(n) for n in range(61, 66)]
    + ["71", "81", "82", "83", "91"]
)

#: ISO 7064 MOD 11-2 weights for the first 17 characters of a citizen ID number.
CITIZEN_ID_WEIGHTS: tuple[int, ...] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

#: GB 32100-2015 alphabet (no I, O, Z, S, V); a character's value is its index.
USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {ch: i for i, ch in enumerate(USCC_CHARSET)}
_USCC_WEIGHTS: tuple[int, ...] = tuple(pow(3, i, 31) for i in range(17))

#: OID arc that starts every GB/T 36904 e-licence identifier.
ELICENCE_PREFIX = "1.2.156.3005.2"
_MOD37_36_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MOD37_36_VALUE = {ch: i for i, ch in enumerate(_MOD37_36_ALPHABET)}

_EARLIEST_BIRTH = datetime.date(1900, 1, 1)

#: Common two-character compound surnames (复姓), kept whole by :func:`mask_name`.
COMPOUND_SURNAMES: frozenset[str] = frozenset(
    """
    欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 夏侯 轩辕 令狐 端木 独孤 南宫 西门 申屠
    公羊 澹台 公冶 宗政 濮阳 淳于 单于 太叔 仲孙 钟离 闾丘 东郭 百里 呼延 万俟 司空 司寇 拓跋 第五 左丘
    """.split()
)

#: Region codes the project refers to by name (docs/domain.md, "Identifiers").
KNOWN_REGIONS: Mapping[str, str] = MappingProxyType(
    {
        "110000": "北京市",
        "310000": "上海市",
        "320200": "无锡市",
        "320213": "梁溪区",
        "330100": "杭州市",
        "370200": "青岛市",
        "370202": "市南区",
        "410100": "郑州市",
        "410105": "金水区",
        "440100": "广州市",
        "440300": "深圳市",
        "440304": "福田区",
        "440305": "南山区",
        "440600": "佛山市",
        "440606": "顺德区",
        "510100": "成都市",
    }
)


class InvalidIdentifier(ValueError):
    """An identifier failed validation.

    The message and the reason describe the problem only; they never contain the value or any part of it.

    Attributes:
        reason: Short English description of the problem, suitable as a gRPC field-violation
            description (e.g. ``"check character mismatch"``).
        kind: Which kind of identifier was being checked (e.g. ``"citizen ID"``).
    """

    def __init__(self, reason: str, *, kind: str = "identifier") -> None:
        super().__init__(f"invalid {kind}: {reason}")
        self.reason = reason
        self.kind = kind


def _is_ascii_digits(value: str) -> bool:
    return bool(value) and all(ch in _DIGITS for ch in value)


# --------------------------------------------------------------------------- citizen ID (GB 11643-1999)


def citizen_id_check_char(first17: str) -> str:
    """Compute the ISO 7064 MOD 11-2 check character of a citizen ID number.

    Args:
        first17: The first 17 characters (ASCII digits) of the ID number.

    Returns:
        The check character: ``"0"``-``"9"`` or ``"X"``.

    Raises:
        InvalidIdentifier: If ``first17`` is not exactly 17 ASCII digits.
    """
    kind = "citizen ID"
    if not isinstance(first17, str) or len(first17) != 17:
        raise InvalidIdentifier("body not 17 characters", kind=kind)
    if not _is_ascii_digits(first17):
        raise InvalidIdentifier("invalid character in body", kind=kind)
    total = sum(int(ch) * w for ch, w in zip(first17, CITIZEN_ID_WEIGHTS, strict=True))
    check = (12 - total % 11) % 11
    return "X" if check == 10 else str(check)


def check_citizen_id(value: str, *, today: datetime.date | None = None) -> str:
    """Validate an 18-character citizen ID number (GB 11643-1999).

    Checks, in order: length, characters (17 ASCII digits then a digit or ``X``/``x``), the province
    part of the area code, the birth date (a real calendar date, not before 1900-01-01 and not after
    ``today``), and the MOD 11-2 check character. Nothing is stripped: surrounding spaces are an error.

    Args:
        value: The ID number.
        today: Reference date for the "birth date in the future" rule; defaults to ``date.today()``.

    Returns:
        The normalised ID number (a lowercase ``x`` check character becomes ``X``).

    Raises:
        InvalidIdentifier: If the value is not a valid citizen ID number.
    """
    kind = "citizen ID"
    if not isinstance(value, str):
        raise InvalidIdentifier("not a string", kind=kind)
    if len(value) != 18:
        raise InvalidIdentifier("not 18 characters", kind=kind)
    body, check = value[:17], value[17]
    if not _is_ascii_digits(body) or check not in "0123456789Xx":
        raise InvalidIdentifier("invalid character", kind=kind)
    if body[:2] not in PROVINCE_CODES:
        raise InvalidIdentifier("invalid province code", kind=kind)
    try:
        birth = datetime.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        raise InvalidIdentifier("impossible birth date", kind=kind) from None
    if birth < _EARLIEST_BIRTH:
        raise InvalidIdentifier("birth date before 1900", kind=kind)
    if birth > (today if today is not None else datetime.date.today()):
        raise InvalidIdentifier("birth date in the future", kind=kind)
    check = check.upper()
    if citizen_id_check_char(body) != check:
        raise InvalidIdentifier("check character mismatch", kind=kind)
    return body + check


# --------------------------------------------------------------------------- USCC (GB 32100-2015)


def uscc_check_char(first17: str) -> str:
    """Compute the GB 32100-2015 check character of a unified social credit code.

    Weights are ``3**(i-1) mod 31`` for positions i = 1..17; the check value is
    ``(31 - sum mod 31) mod 31`` mapped through :data:`USCC_CHARSET`.

    Args:
        first17: The first 17 characters, uppercase, from :data:`USCC_CHARSET`.

    Returns:
        The check character.

    Raises:
        InvalidIdentifier: If ``first17`` is not 17 characters of the charset.
    """
    kind = "unified social credit code"
    if not isinstance(first17, str) or len(first17) != 17:
        raise InvalidIdentifier("body not 17 characters", kind=kind)
    if any(ch not in _USCC_VALUE for ch in first17):
        raise InvalidIdentifier("invalid character in body", kind=kind)
    total = sum(_USCC_VALUE[ch] * w for ch, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_CHARSET[(31 - total % 31) % 31]


def check_uscc(value: str, *, strict: bool = True) -> str:
    """Validate a unified social credit code (统一社会信用代码, GB 32100-2015).

    Lowercase letters are accepted and normalised to uppercase. Length (18), charset and structure
    (positions 3-8, the region, are digits) are always enforced.

    Args:
        value: The code.
        strict: When False, a wrong final check character is tolerated (some real historical codes
            fail the check); everything else is still enforced.

    Returns:
        The normalised (uppercase) code.

    Raises:
        InvalidIdentifier: If the value is not a valid code.
    """
    kind = "unified social credit code"
    if not isinstance(value, str):
        raise InvalidIdentifier("not a string", kind=kind)
    if len(value) != 18:
        raise InvalidIdentifier("not 18 characters", kind=kind)
    if not value.isascii():
        raise InvalidIdentifier("invalid character", kind=kind)
    code = value.upper()
    if any(ch not in _USCC_VALUE for ch in code):
        raise InvalidIdentifier("invalid character", kind=kind)
    if not _is_ascii_digits(code[2:8]):
        raise InvalidIdentifier("region part not digits", kind=kind)
    if strict and uscc_check_char(code[:17]) != code[17]:
        raise InvalidIdentifier("check character mismatch", kind=kind)
    return code


# --------------------------------------------------------------------------- region codes (GB/T 2260)


def _region_level6(code6: str) -> str:
    """Classify a structurally valid 6-digit code as province, city or county (no validation)."""
    if code6[2:] == "0000":
        return "province"
    if code6[4:] == "00":
        return "city"
    return "county"


def check_region_code(value: str) -> str:
    """Validate a GB/T 2260 administrative region code of 6, 9 or 12 digits.

    Six digits: ``XX0000`` is a province, ``XXXX00`` a city, anything else a county; the province part
    must be a known province code and a county code cannot have ``00`` as its city part. Nine digits:
    a 6-digit code plus a 3-digit 镇/街道 part other than ``000``. Twelve digits: a 9-digit code plus a
    3-digit 村/居委会 part other than ``000``. Below six digits the 6-digit prefix must be a county or a
    city (cities without districts, such as 东莞 441900, have towns directly under them), not a province.
    Structure only: whether the code exists (or existed) is not checked.

    Args:
        value: The code.

    Returns:
        The value, unchanged.

    Raises:
        InvalidIdentifier: If the value is not a structurally valid region code.
    """
    kind = "region code"
    if not isinstance(value, str):
        raise InvalidIdentifier("not a string", kind=kind)
    if len(value) not in (6, 9, 12):
        raise InvalidIdentifier("not 6, 9 or 12 digits", kind=kind)
    if not _is_ascii_digits(value):
        raise InvalidIdentifier("not all digits", kind=kind)
    if value[:2] not in PROVINCE_CODES:
        raise InvalidIdentifier("invalid province code", kind=kind)
    if value[2:4] == "00" and value[4:6] != "00":
        raise InvalidIdentifier("county code without city part", kind=kind)
    if len(value) >= 9:
        if _region_level6(value[:6]) == "province":
            raise InvalidIdentifier("town code under a province-level code", kind=kind)
        if value[6:9] == "000":
            raise InvalidIdentifier("town part is 000", kind=kind)
    if len(value) == 12 and value[9:12] == "000":
        raise InvalidIdentifier("village part is 000", kind=kind)
    return value


def region_parent(code: str) -> str | None:
    """Return the parent of a region code.

    12 digits -> its 9-digit prefix; 9 digits -> its 6-digit prefix; county ``XXXXYY`` -> city
    ``XXXX00``; city ``XXXX00`` -> province ``XX0000``; province -> None.

    Args:
        code: A region code (validated with :func:`check_region_code`).

    Returns:
        The parent code, or None for a province.

    Raises:
        InvalidIdentifier: If ``code`` is not a valid region code.
    """
    code = check_region_code(code)
    if len(code) == 12:
        return code[:9]
    if len(code) == 9:
        return code[:6]
    level = _region_level6(code)
    if level == "county":
        return code[:4] + "00"
    if level == "city":
        return code[:2] + "0000"
    return None


# --------------------------------------------------------------------------- phone


def check_phone(value: str) -> str:
    """Validate a mainland mobile number: 11 ASCII digits, ``1`` then ``3``-``9``.

    Args:
        value: The number, without country code, spaces or dashes.

    Returns:
        The value, unchanged.

    Raises:
        InvalidIdentifier: If the value is not a mainland mobile number.
    """
    kind = "mobile number"
    if not isinstance(value, str):
        raise InvalidIdentifier("not a string", kind=kind)
    if len(value) != 11:
        raise InvalidIdentifier("not 11 digits", kind=kind)
    if not _is_ascii_digits(value):
        raise InvalidIdentifier("not all digits", kind=kind)
    if value[0] != "1" or value[1] not in "3456789":
        raise InvalidIdentifier("not a mainland mobile prefix", kind=kind)
    return value


# --------------------------------------------------------------------------- e-licence (GB/T 36904)


def elicence_check_char(data: str) -> str:
    """Compute the ISO 7064 MOD 37,36 (hybrid system) check character over ``data``.

    Args:
        data: Characters from ``0-9A-Z`` (uppercase).

    Returns:
        The check character, from ``0-9A-Z``.

    Raises:
        InvalidIdentifier: If ``data`` is empty or has a character outside ``0-9A-Z``.
    """
    kind = "e-licence identifier"
    if not isinstance(data, str) or not data:
        raise InvalidIdentifier("nothing to check", kind=kind)
    p = 36
    for ch in data:
        v = _MOD37_36_VALUE.get(ch)
        if v is None:
            raise InvalidIdentifier("invalid character", kind=kind)
        p = (p + v) % 36 or 36
        p = (p * 2) % 37
    return _MOD37_36_ALPHABET[(37 - p) % 36]


def check_elicence_id(value: str) -> str:
    """Validate an e-licence identifier (电子证照标识, GB/T 36904).

    Form: ``1.2.156.3005.2.<type>.<issuer USCC>.<serial>.<3-digit version>.<check>``, ten dot-separated
    parts. The check character is ISO 7064 MOD 37,36 over the parts **after** the fixed
    ``1.2.156.3005.2`` prefix and before the check, concatenated without dots (``<type><issuer><serial>
    <version>``). That is the reading under which docs/domain.md's example
    ``1.2.156.3005.2.11100000000013338W009.11330105002500287C.2025052201.002.0`` validates; including
    the prefix digits would give ``D`` there instead of ``0``.

    The type part (in the standard an 18-character USCC of the defining department plus a 3-digit
    number) and the serial must be non-empty ``0-9A-Z``; the issuer must be a structurally valid USCC
    (its own check character is not enforced, as historical codes may fail it). Lowercase letters are
    accepted and normalised to uppercase.

    Args:
        value: The identifier.

    Returns:
        The normalised (uppercase) identifier.

    Raises:
        InvalidIdentifier: If the value is not a valid e-licence identifier.
    """
    kind = "e-licence identifier"
    if not isinstance(value, str):
        raise InvalidIdentifier("not a string", kind=kind)
    if not value.isascii():
        raise InvalidIdentifier("invalid character", kind=kind)
    norm = value.upper()
    prefix = ELICENCE_PREFIX + "."
    if not norm.startswith(prefix):
        raise InvalidIdentifier("wrong prefix", kind=kind)
    parts = norm[len(prefix) :].split(".")
    if len(parts) != 5:
        raise InvalidIdentifier("wrong number of parts", kind=kind)
    type_code, issuer, serial, version, check = parts
    for part in (type_code, serial):
        if not part or any(ch not in _MOD37_36_VALUE for ch in part):
            raise InvalidIdentifier("invalid type or serial part", kind=kind)
    try:
        check_uscc(issuer, strict=False)
    except InvalidIdentifier:
        raise InvalidIdentifier("issuer not a unified social credit code", kind=kind) from None
    if len(version) != 3 or not _is_ascii_digits(version):
        raise InvalidIdentifier("version not 3 digits", kind=kind)
    if len(check) != 1 or check not in _MOD37_36_VALUE:
        raise InvalidIdentifier("check part not one character", kind=kind)
    if elicence_check_char(type_code + issuer + serial + version) != check:
        raise InvalidIdentifier("check character mismatch", kind=kind)
    return norm


# --------------------------------------------------------------------------- masking


def mask_identifier(value: str) -> str:
    """Mask an identifier for logs: keep a few characters at each end, star the rest.

    Values of 16 characters or more keep the first 4 and last 4. Values of 8 to 15 characters keep
    ``len // 4`` at each end, so that at least half is always hidden (a literal 4 + 4 would reveal an
    8-character value completely). Shorter values are all stars. The length is preserved.

    Args:
        value: Any identifier.

    Returns:
        The masked value.
    """
    n = len(value)
    if n < 8:
        return "*" * n
    keep = min(4, n // 4)
    return value[:keep] + "*" * (n - 2 * keep) + value[-keep:]


def mask_citizen_id(value: str) -> str:
    """Mask a citizen ID number: first 4, ten stars, last 4 (``4403**********123X``).

    Values that are not 18 characters long are masked by :func:`mask_identifier`. Never raises.

    Args:
        value: The ID number (not validated).

    Returns:
        The masked value.
    """
    if len(value) != 18:
        return mask_identifier(value)
    return value[:4] + "*" * 10 + value[-4:]


def mask_name(name: str) -> str:
    """Mask a personal name: keep the surname's first character, star the rest (``张三`` -> ``张*``).

    A name of three or more characters that starts with a common compound surname (复姓, see
    :data:`COMPOUND_SURNAMES`) keeps both surname characters (``欧阳娜娜`` -> ``欧阳**``). A
    single-character name becomes ``*``; an empty name stays empty. The length is preserved.

    Args:
        name: The name.

    Returns:
        The masked name.
    """
    if len(name) <= 1:
        return "*" * len(name)
    keep = 2 if len(name) >= 3 and name[:2] in COMPOUND_SURNAMES else 1
    return name[:keep] + "*" * (len(name) - keep)


def mask_phone(value: str) -> str:
    """Mask an 11-digit mobile number: first 3, four stars, last 4 (``138****5678``).

    Other lengths are masked by :func:`mask_identifier`. Never raises.

    Args:
        value: The number (not validated).

    Returns:
        The masked value.
    """
    if len(value) != 11:
        return mask_identifier(value)
    return value[:3] + "****" + value[-4:]
