"""A Submit to a back end that only answers data checks: what its answers make of the case."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from connectors.adapters import AdapterFailure, AdapterRequest, submit_via_call
from tongban.core.errors import NotFound, Reason

REQUEST = AdapterRequest("01JTESTMESSAGE0000000000000", "WFZJLZM00001", "440300", "person", "", "", {})


class Answers:
    def __init__(self, outcome: Exception | None) -> None:
        self.outcome = outcome

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        if self.outcome is not None:
            raise self.outcome
        return {"found": True}


async def test_a_record_found_is_approved() -> None:
    assert [s.status for s in await submit_via_call(Answers(None), REQUEST)] == [1, 3, 11]


@pytest.mark.parametrize(
    "refusal",
    [NotFound("no record"), AdapterFailure("409 from the back end", reason=Reason.BACKEND_REFUSED)],
    ids=["not-found", "business-refusal"],
)
async def test_no_record_or_a_business_refusal_is_not_accepted(refusal: Exception) -> None:
    statuses = await submit_via_call(Answers(refusal), REQUEST)
    assert [s.status for s in statuses] == [1, 5]
    assert statuses[-1].local_code == "BYSL"


@pytest.mark.parametrize("reason", [Reason.BACKEND_FAILURE, Reason.BACKEND_BUSY, Reason.BACKEND_CIRCUIT_OPEN])
async def test_a_failing_back_end_is_left_to_the_stream_s_retries(reason: Reason) -> None:
    with pytest.raises(AdapterFailure) as err:
        await submit_via_call(Answers(AdapterFailure("down", reason=reason)), REQUEST)
    assert err.value.reason == reason
