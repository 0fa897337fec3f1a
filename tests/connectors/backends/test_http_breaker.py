"""The circuit breaker of an HTTP back end: open after N failures in a row (no call reaches the
back end while open), one trial call after the cool-down, closed again when it succeeds."""

from __future__ import annotations

import pytest

from connectors.adapters import AdapterFailure
from connectors.backends.breaker import BreakerState, CircuitBreaker, Permit
from tests.connectors.backends.conftest import MakeBackend
from tests.connectors.backends.http_backend import (
    PENSION,
    BackendApp,
    adapter_request,
    json_reply,
    status_reply,
)
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.core.errors import Reason

SERVICE = {"path": "/persons/{applicant.id}"}


async def test_the_circuit_opens_after_n_failures_and_closes_after_the_cool_down(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(500)
    backend = backends(app.base_url, retries=0, breaker_failures=3, breaker_cooldown_s=1.0)
    service = backend.service(PENSION, SERVICE, catalogue.items[PENSION])

    for _ in range(3):
        with pytest.raises(AdapterFailure) as caught:
            await service.call(adapter_request(PENSION))
        assert caught.value.reason is Reason.BACKEND_FAILURE
    for _ in range(5):
        with pytest.raises(AdapterFailure) as caught:
            await service.call(adapter_request(PENSION))
        assert caught.value.reason is Reason.BACKEND_CIRCUIT_OPEN
    assert app.calls == 3  # nothing reached the back end while the circuit was open
    assert backend.breaker.state is not BreakerState.CLOSED

    app.reply = json_reply({"status": "正常参保"})

    async def answers() -> bool:
        try:
            await service.call(adapter_request(PENSION))
        except AdapterFailure as exc:
            assert exc.reason is Reason.BACKEND_CIRCUIT_OPEN
            return False
        return True

    await eventually(answers, what="the breaker lets a trial call through after its cool-down")
    assert app.calls == 4  # one trial call, and it closed the circuit
    assert backend.breaker.state is BreakerState.CLOSED
    await service.call(adapter_request(PENSION))
    assert app.calls == 5


async def test_a_failed_trial_opens_the_circuit_again(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(503)
    backend = backends(app.base_url, retries=0, breaker_failures=1, breaker_cooldown_s=1.0)
    service = backend.service(PENSION, SERVICE, catalogue.items[PENSION])
    with pytest.raises(AdapterFailure):
        await service.call(adapter_request(PENSION))
    assert backend.breaker.state is BreakerState.OPEN

    async def trial_failed() -> bool:
        with pytest.raises(AdapterFailure):
            await service.call(adapter_request(PENSION))
        return app.calls == 2

    await eventually(trial_failed, what="the trial call reaches the back end")
    with pytest.raises(AdapterFailure) as caught:
        await service.call(adapter_request(PENSION))
    assert caught.value.reason is Reason.BACKEND_CIRCUIT_OPEN
    assert app.calls == 2


async def test_answers_that_are_not_failures_keep_the_circuit_closed(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(404)
    backend = backends(app.base_url, retries=0, breaker_failures=2)
    service = backend.service(PENSION, SERVICE, catalogue.items[PENSION])

    for _ in range(5):
        with pytest.raises(Exception, match="no record"):
            await service.call(adapter_request(PENSION))

    assert backend.breaker.state is BreakerState.CLOSED
    assert app.calls == 5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_state_machine() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=clock)

    permit = breaker.acquire()
    assert permit is Permit.CALL
    breaker.failed(permit)
    breaker.succeeded(Permit.CALL)  # a success forgets the failure
    breaker.failed(Permit.CALL)
    assert breaker.state is BreakerState.CLOSED
    breaker.failed(Permit.CALL)
    assert breaker.state is BreakerState.OPEN and breaker.acquire() is None

    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN
    trial = breaker.acquire()
    assert trial is Permit.TRIAL
    assert breaker.acquire() is None  # one trial at a time
    breaker.abandoned(trial)  # cancelled: the next caller may try
    trial = breaker.acquire()
    assert trial is Permit.TRIAL
    breaker.failed(trial)
    assert breaker.state is BreakerState.OPEN and breaker.acquire() is None

    clock.now += 10
    trial = breaker.acquire()
    assert trial is Permit.TRIAL
    breaker.succeeded(trial)
    assert breaker.state is BreakerState.CLOSED and breaker.acquire() is Permit.CALL


def test_a_breaker_with_no_threshold_never_opens() -> None:
    breaker = CircuitBreaker(failures=0, cooldown_s=1)
    for _ in range(100):
        breaker.failed(Permit.CALL)
    assert breaker.acquire() is Permit.CALL
