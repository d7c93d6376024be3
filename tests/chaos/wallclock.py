"""An injectable wall clock for in-process daemon schedules: steps forwards and backwards.

A real step of the machine's clock is impossible in a test (and would hit every process on it), so
the wall clock the worker's code reads is replaced while a schedule runs: the ``datetime`` name of
the modules that read the wall-clock time (APScheduler's scheduler, which used to run the claim poll
by it, and the worker's own modules) becomes a ``datetime`` whose ``now()`` is the real time plus
the steps so far. The monotonic clock is left alone, as an NTP step or a resumed VM leaves it. The
simulator (the platform, another machine) and Postgres (leases and due times are its ``now()``)
keep the real time.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import threading
from collections.abc import Iterator
from typing import Any, Final

# Modules whose ``datetime`` name is the wall clock the worker reads.
MODULES: Final = (
    "apscheduler.schedulers.base",
    "sync_worker.scheduler",
    "sync_worker.sync",
    "sync_worker.answers",
)

_lock = threading.Lock()
_offset = datetime.timedelta()


class SteppedDatetime(datetime.datetime):
    """``datetime`` whose ``now()`` and ``utcnow()`` read the stepped wall clock."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> Any:
        with _lock:
            offset = _offset
        return datetime.datetime.now(tz) + offset

    @classmethod
    def utcnow(cls) -> Any:
        return cls.now(datetime.UTC).replace(tzinfo=None)


def step(seconds: float) -> None:
    """Step the injected wall clock by ``seconds`` (negative: backwards); it stays stepped."""
    global _offset  # noqa: PLW0603  # one wall clock per process, as on a machine
    with _lock:
        _offset += datetime.timedelta(seconds=seconds)


def offset_seconds() -> float:
    with _lock:
        return _offset.total_seconds()


@contextlib.contextmanager
def injected() -> Iterator[None]:
    """The worker's modules read the injectable wall clock (at no step yet) until the block ends."""
    global _offset  # noqa: PLW0603  # reset for the next schedule
    saved: list[tuple[Any, Any]] = []
    for name in MODULES:
        module: Any = importlib.import_module(name)
        saved.append((module, module.datetime))
        module.datetime = _replacement(module.datetime)
    try:
        yield
    finally:
        for module, original in saved:
            module.datetime = original
        with _lock:
            _offset = datetime.timedelta()


def _replacement(original: Any) -> Any:
    """What replaces a module's ``datetime`` name: the class itself, or for a module that imports
    the ``datetime`` module, a stand-in module whose ``datetime`` is the stepped class."""
    if isinstance(original, type):
        return SteppedDatetime
    return _SteppedModule(original)


class _SteppedModule:
    """The ``datetime`` module with its ``datetime`` class stepped; everything else as it is."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.datetime = SteppedDatetime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
