"""Database values as JSON-like answer values (:func:`connectors.backends.sql.json_value`)."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import uuid
from typing import Any

import pytest

from connectors.adapters import AdapterFailure
from connectors.backends.sql import json_value
from tongban.core.errors import Reason

D = decimal.Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        ("王小明", "王小明"),
        (42, 42),
        (2**53, 2**53),
        (2**63 - 1, "9223372036854775807"),  # a bigint id keeps every digit
        (1.5, 1.5),
        (float("nan"), None),
        (D("1234.50"), 1234.5),
        (D("12.00"), 12),
        (D("123456789012345678901234567890"), 1.2345678901234568e29),
        (D("NaN"), None),
        (datetime.date(2026, 3, 7), "2026-03-07"),
        (datetime.datetime(2026, 3, 7, 8, 9, 10), "2026-03-07T08:09:10"),
        (datetime.datetime(2026, 3, 7, 8, 9, tzinfo=datetime.UTC), "2026-03-07T08:09:00+00:00"),
        (datetime.time(8, 30), "08:30:00"),
        (datetime.timedelta(days=1, seconds=1), 86401.0),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
        (ipaddress.ip_network("10.0.0.0/8"), "10.0.0.0/8"),
        ([1, D("2.5"), None], [1, 2.5, None]),
        ({"level": 2, "since": "2020"}, {"level": 2, "since": "2020"}),
    ],
)
def test_json_values(value: Any, expected: Any) -> None:
    assert json_value(value, "c") == expected


@pytest.mark.parametrize("value", [b"\x89PNG", memoryview(b"x"), bytearray(b"x")])
def test_binary_is_refused_by_column_name(value: Any) -> None:
    with pytest.raises(AdapterFailure, match="'photo' is binary") as caught:
        json_value(value, "photo")
    assert caught.value.reason is Reason.BACKEND_FAILURE


def test_a_value_with_no_json_form_is_refused_without_its_text() -> None:
    class Point:
        def __str__(self) -> str:
            return "secret"

    with pytest.raises(AdapterFailure) as caught:
        json_value(Point(), "where")
    assert "secret" not in caught.value.message and "Point" in caught.value.message
