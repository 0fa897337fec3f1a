"""The one table from a reason to a gRPC status code."""

from __future__ import annotations

import grpc
import pytest

from tongban.core.errors import (
    ConfigError,
    DeadlineExceeded,
    EnvelopeError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    Reason,
    RegistryError,
    TongbanError,
    Unauthenticated,
    Unavailable,
    Violation,
)
from tongban.runtime.status_codes import STATUS, problem, problem_of, status_from_wire, status_of


def test_every_reason_has_a_status_code() -> None:
    assert set(STATUS) == set(Reason)
    assert all(
        isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK for code in STATUS.values()
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TongbanError("x"), grpc.StatusCode.INTERNAL),
        (InvalidRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (RateLimited("x", retry_after_s=1.0), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (EnvelopeError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (RegistryError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (ConfigError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (Unavailable("x", reason=Reason.MAINTENANCE), grpc.StatusCode.UNAVAILABLE),
        (NotFound("x", reason=Reason.CASE_NOT_FOUND), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_each_error_class_keeps_its_status(error: TongbanError, code: grpc.StatusCode) -> None:
    assert status_of(error.reason) is code


def test_wire_codes_from_another_region_are_checked() -> None:
    assert status_from_wire(5) is grpc.StatusCode.NOT_FOUND
    assert status_from_wire(0) is grpc.StatusCode.UNKNOWN  # OK is no refusal
    assert status_from_wire(99) is grpc.StatusCode.UNKNOWN
    assert status_from_wire(-1) is grpc.StatusCode.UNKNOWN


def test_problems_carry_the_reason_its_code_and_the_violations() -> None:
    p = problem(Reason.BACKEND_TIMEOUT, "back end did not answer")
    assert (p.reason, p.code, p.message) == (
        "BACKEND_TIMEOUT",
        grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
        "back end did not answer",
    )
    refused = problem_of(InvalidRequest("bad form", violations=[Violation("request.fields.x", "required")]))
    assert (refused.reason, refused.code) == ("INVALID_REQUEST", grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert [(v.field, v.description) for v in refused.field_violations] == [("request.fields.x", "required")]
    assert problem_of(NotFound("nope"), message="fixed text").message == "fixed text"
