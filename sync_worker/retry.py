"""When and how long to wait before calling ThingSpace again.

``RetryPolicy`` holds every knob (attempts, backoff, jitter, the ``Retry-After``
cap) plus the ``sleep`` and ``clock`` it uses, so tests drive it without real
time. ``RetryPolicy.call`` runs a function under tenacity (a first attempt that
succeeds never reaches it).

The decision to retry and the length of the wait are taken together, in the
retry predicate: a wait that would go past the caller's ``deadline`` or a
``Retry-After`` above ``max_retry_after`` means "do not retry", and the last
error is raised unchanged. Deciding both in one place keeps the behaviour the
same on every tenacity version the project allows (older ones check ``stop``
before computing the wait).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import tenacity

from sync_worker import errors

T = TypeVar("T")

# The defaults of the knobs operators set (THINGSPACE_RETRY_*: config reads them from here).
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_MAX_BACKOFF: Final = 30.0
DEFAULT_MAX_RETRY_AFTER: Final = 120.0


class RetryObserver(Protocol):
    def on_retry(self, operation: str, reason: str, wait: float) -> None: ...


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``Retry-After`` wins when the server sends one.

    ``max_attempts`` counts the first try. ``jitter`` is a fraction: the backoff is
    stretched by up to that much at random so workers that failed together do not
    come back together. ``max_backoff`` bounds the jittered backoff.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: float = 0.5
    max_backoff: float = DEFAULT_MAX_BACKOFF
    multiplier: float = 2.0
    jitter: float = 0.25
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    sleep: Callable[[float], None] = dataclasses.field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = dataclasses.field(default=time.monotonic, repr=False, compare=False)
    random: Callable[[], float] = dataclasses.field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise errors.ConfigError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise errors.ConfigError("RetryPolicy backoffs and max_retry_after must not be negative")
        if self.multiplier < 1:
            raise errors.ConfigError("RetryPolicy.multiplier must be at least 1")
        if self.jitter < 0:
            raise errors.ConfigError("RetryPolicy.jitter must not be negative")

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1 = the first retry) without a ``Retry-After``."""
        base = self.initial_backoff * self.multiplier ** max(retry_number - 1, 0)
        return min(self.max_backoff, base * (1.0 + self.jitter * self.random()))

    def wait_for(
        self, error: BaseException, retry_number: int, deadline: float | None = None
    ) -> float | None:
        """Seconds to wait before retry ``retry_number``, or None when it must not happen."""
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)):
            if retry_after > self.max_retry_after:
                return None
            wait = max(float(retry_after), 0.0)
        else:
            wait = self.backoff(retry_number)
        if deadline is not None and self.clock() + wait > deadline:
            return None
        return wait

    def call(
        self,
        fn: Callable[[], T],
        *,
        operation: str,
        retry_on: Callable[[BaseException], bool],
        deadline: float | None = None,
        observer: RetryObserver | None = None,
    ) -> T:
        """Run ``fn``; retry errors ``retry_on`` accepts while attempts, cap and deadline allow."""
        # Nearly every call succeeds at once: the first attempt runs before tenacity is set up
        # (a tenth of a millisecond per call). A failed one is handed to tenacity as its first
        # attempt's outcome, so every decision, wait and callback is tenacity's, as before.
        try:
            return fn()
        except BaseException as exc:  # tenacity decides, as for any attempt
            first: BaseException | None = exc

        def attempt() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return fn()

        planned: dict[int, float] = {}

        def should_retry(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            if outcome is None or not outcome.failed:
                return False
            exc = outcome.exception()
            if exc is None or not retry_on(exc):
                return False
            if state.attempt_number >= self.max_attempts:
                return False
            wait = self.wait_for(exc, state.attempt_number, deadline)
            if wait is None:
                return False
            planned[state.attempt_number] = wait
            return True

        def wait(state: tenacity.RetryCallState) -> float:
            return planned[state.attempt_number]

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if observer is None or state.outcome is None:
                return
            observer.on_retry(operation, describe(state.outcome.exception()), planned[state.attempt_number])

        retrying = tenacity.Retrying(
            retry=should_retry,
            wait=wait,
            stop=tenacity.stop_never,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(attempt)


def describe(error: BaseException | None) -> str:
    """A short, secret-free label for metrics: ``http_503``, ``no_response``..."""
    if isinstance(error, errors.UnreadableAnswerError):
        return "unreadable_body"
    if isinstance(error, errors.ApiError):
        return f"http_{error.status}" if error.status is not None else "no_response"
    return type(error).__name__ if error is not None else "unknown"
