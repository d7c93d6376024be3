"""Greedy delta debugging: the fewest events of a failing schedule that still break the same promise.

Chunks of events are dropped while the schedule still fails (halves first, then smaller pieces,
down to single events: ddmin's complement steps), then whole fault passes (with their events). A
failure then reads as two or three events, and becomes a regression test in minutes. Every try is
a whole run of the candidate, so the search stops when ``seconds`` are up and returns the smallest
schedule found so far.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sized
from typing import Generic, Protocol, Self, TypeVar


class Shrinkable(Protocol):
    """A schedule of events in fault passes (``schedule.Schedule``, ``push.PushSchedule``)."""

    @property
    def events(self) -> Sized: ...

    @property
    def passes(self) -> int: ...

    def without(self, drop: range) -> Self: ...

    def without_pass(self, number: int) -> Self: ...


S = TypeVar("S", bound=Shrinkable)


@dataclasses.dataclass(frozen=True)
class Shrunk(Generic[S]):
    schedule: S
    runs: int
    seconds: float
    timed_out: bool


def shrink(original: S, fails: Callable[[S], bool], *, seconds: float) -> Shrunk[S]:
    """``original`` with as many events dropped as possible while ``fails`` stays true."""
    started = time.monotonic()
    runs = 0

    def out_of_time() -> bool:
        return time.monotonic() - started > seconds

    def still_fails(candidate: S) -> bool:
        nonlocal runs
        runs += 1
        return fails(candidate)

    current = original
    pieces = 2
    while current.events and not out_of_time():
        size = math.ceil(len(current.events) / pieces)
        for start in range(0, len(current.events), size):
            candidate = current.without(range(start, start + size))
            if still_fails(candidate):
                current = candidate
                pieces = max(pieces - 1, 2)
                break
            if out_of_time():
                break
        else:
            if size == 1:
                break
            pieces = min(len(current.events), pieces * 2)
    number = 0
    while number < current.passes and current.passes > 1 and not out_of_time():
        candidate = current.without_pass(number)
        if still_fails(candidate):
            current = candidate
        else:
            number += 1
    return Shrunk(current, runs, time.monotonic() - started, out_of_time())
