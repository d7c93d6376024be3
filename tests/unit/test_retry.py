"""RetryPolicy: backoff, Retry-After, cap, deadline, attempts, observer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict, Unpack
from unittest import mock

import pytest
import tenacity

from sync_worker import errors, retry
from tests.fakes import FakeTime


class Recorder:
    def __init__(self) -> None:
        self.retries: list[tuple[str, str, float]] = []

    def on_retry(self, operation: str, reason: str, wait: float) -> None:
        self.retries.append((operation, reason, wait))


class Knobs(TypedDict, total=False):
    """The numeric RetryPolicy fields a test may set."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    jitter: float
    max_retry_after: float


def policy(t: FakeTime, **kw: Unpack[Knobs]) -> retry.RetryPolicy:
    return retry.RetryPolicy(sleep=t.sleep, clock=t.clock, random=lambda: 0.0, **kw)


def failing(errs: list[BaseException], result: str = "ok") -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errs:
            raise errs.pop(0)
        return result

    return calls, fn


def transient(status: int = 503, retry_after: float | None = None) -> errors.ApiTransientError:
    return errors.ApiTransientError("x", status=status, operation="op", retry_after=retry_after)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    """Backoff is initial * multiplier**(n-1), never above max_backoff."""
    p = policy(FakeTime(), initial_backoff=1.0, multiplier=2.0, max_backoff=5.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stretches_backoff_within_its_fraction() -> None:
    """Jitter adds at most `jitter` times the backoff, driven by the injected random."""
    p = retry.RetryPolicy(initial_backoff=2.0, jitter=0.5, random=lambda: 1.0)
    assert p.backoff(1) == 3.0


def test_retry_after_seconds_replace_backoff() -> None:
    """A server Retry-After is used as the wait instead of the computed backoff."""
    p = policy(FakeTime(), initial_backoff=0.1)
    assert p.wait_for(transient(429, retry_after=7.0), 1) == 7.0


def test_retry_after_above_cap_stops() -> None:
    """A Retry-After longer than max_retry_after means no retry at all."""
    p = policy(FakeTime(), max_retry_after=10.0)
    assert p.wait_for(transient(429, retry_after=11.0), 1) is None
    assert p.wait_for(transient(429, retry_after=10.0), 1) == 10.0


def test_wait_past_deadline_stops() -> None:
    """A wait that would end after the deadline is not planned."""
    t = FakeTime()
    p = policy(t, initial_backoff=5.0)
    assert p.wait_for(transient(), 1, deadline=t.now + 4.0) is None
    assert p.wait_for(transient(), 1, deadline=t.now + 5.0) == 5.0


def test_call_retries_until_success_and_reports_each_retry() -> None:
    """Transient failures are retried with the planned waits; the observer sees every retry."""
    t, rec = FakeTime(), Recorder()
    calls, fn = failing([transient(503), transient(429, retry_after=2.0)])
    p = policy(t, initial_backoff=0.5)
    result = p.call(fn, operation="op", retry_on=lambda e: True, observer=rec)
    assert result == "ok"
    assert len(calls) == 3
    assert t.sleeps == [0.5, 2.0]
    assert rec.retries == [("op", "http_503", 0.5), ("op", "http_429", 2.0)]


def test_call_gives_up_after_max_attempts_with_the_last_error() -> None:
    """After max_attempts tries the last error itself is raised (not a tenacity wrapper)."""
    t = FakeTime()
    last = transient(502)
    calls, fn = failing([transient(500), transient(503), last])
    with pytest.raises(errors.ApiTransientError) as info:
        policy(t, max_attempts=3).call(fn, operation="op", retry_on=lambda e: True)
    assert info.value is last
    assert len(calls) == 3
    assert len(t.sleeps) == 2


def test_call_does_not_retry_what_retry_on_refuses() -> None:
    """An error the predicate refuses (e.g. a refused login) is raised after one attempt."""
    t = FakeTime()
    refused = errors.LoginFailedError("no", status=400)
    calls, fn = failing([refused])
    with pytest.raises(errors.LoginFailedError):
        policy(t).call(
            fn,
            operation="op",
            retry_on=lambda e: isinstance(e, errors.TransientError),
        )
    assert len(calls) == 1
    assert t.sleeps == []


def test_call_raises_instead_of_sleeping_past_the_deadline() -> None:
    """With the deadline closer than the next wait the last error is raised and nothing sleeps."""
    t = FakeTime()
    calls, fn = failing([transient(429, retry_after=30.0)])
    with pytest.raises(errors.ApiTransientError):
        policy(t).call(fn, operation="op", retry_on=lambda e: True, deadline=t.now + 10)
    assert len(calls) == 1
    assert t.sleeps == []


def test_a_first_attempt_that_succeeds_never_sets_up_tenacity() -> None:
    """The happy path runs fn once and returns its value without building tenacity's machinery."""
    t = FakeTime()
    calls, fn = failing([])
    with mock.patch.object(tenacity, "Retrying", side_effect=AssertionError("tenacity used")):
        assert policy(t).call(fn, operation="op", retry_on=lambda e: True) == "ok"
    assert len(calls) == 1 and t.sleeps == []


def test_a_failed_first_attempt_counts_as_tenacitys_first() -> None:
    """After a first failure tenacity carries on as attempt 2: same attempts, waits and callbacks."""
    t, rec = FakeTime(), Recorder()
    first, last = transient(503), transient(502)
    calls, fn = failing([first, transient(500), last])
    with pytest.raises(errors.ApiTransientError) as info:
        policy(t, max_attempts=3).call(fn, operation="op", retry_on=lambda e: True, observer=rec)
    assert info.value is last and len(calls) == 3
    assert t.sleeps == [0.5, 1.0]
    assert rec.retries == [("op", "http_503", 0.5), ("op", "http_500", 1.0)]
    refused = errors.LoginFailedError("no", status=400)
    calls, fn = failing([refused])
    with pytest.raises(errors.LoginFailedError) as refusal:
        policy(t).call(fn, operation="op", retry_on=lambda e: False, observer=rec)
    assert refusal.value is refused and len(calls) == 1 and len(rec.retries) == 2


def test_reason_for_a_missing_response() -> None:
    """A timeout or dropped connection is labelled no_response for metrics."""
    assert retry.describe(errors.ApiTransientError("t")) == "no_response"


@pytest.mark.parametrize(
    "kw",
    [{"max_attempts": 0}, {"initial_backoff": -1.0}, {"multiplier": 0.5}, {"jitter": -0.1}],
)
def test_nonsense_policy_is_a_config_error(kw: Knobs) -> None:
    """Impossible knob values are refused when the policy is built."""
    with pytest.raises(errors.ConfigError):
        retry.RetryPolicy(**kw)
