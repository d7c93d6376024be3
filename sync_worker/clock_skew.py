"""The host's clock against the API's: each answer's ``Date`` header against the moment it arrived
(``DateSamples``, ``skew_seconds``), judged by ``sync-worker doctor``."""

from __future__ import annotations

import contextlib
import email.utils
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import requests

from sync_worker import doctor_report

# Beyond this the host's clock is off: the Date header has a resolution of 1 s, and a request
# takes a fraction of one.
CLOCK_SKEW_WARN_SECONDS: Final = 5.0


class DateSamples:
    """The API answers' ``Date`` headers against this host's clock, noted by a response hook."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self.samples: list[float] = []

    @contextlib.contextmanager
    def session(self) -> Iterator[requests.Session]:
        http = requests.Session()
        http.hooks["response"].append(self.note)
        try:
            yield http
        finally:
            http.close()

    def note(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        received = self._now()
        skew = skew_seconds(response.headers.get("Date"), received, response.elapsed.total_seconds())
        if skew is not None:
            with self._lock:
                self.samples.append(skew)
        return response

    def check(self) -> doctor_report.Check:
        with self._lock:
            samples = list(self.samples)
        if not samples:
            return doctor_report.Check("clock", "skipped", "no API answer carried a Date header")
        skew = statistics.median(samples)
        detail = {
            "skew_seconds": round(skew, 1),
            "answers": len(samples),
            "warn_above": CLOCK_SKEW_WARN_SECONDS,
        }
        if abs(skew) <= CLOCK_SKEW_WARN_SECONDS:
            summary = (
                f"this host's clock is within {abs(skew):.0f} s of the API's (Date header, 1 s resolution)"
            )
            return doctor_report.Check("clock", "ok", summary, detail=detail)
        side = "behind" if skew > 0 else "ahead of"
        return doctor_report.Check(
            "clock",
            "warn",
            f"this host's clock is {abs(skew):.0f} s {side} the API's (Date header): log times and "
            "ages measured here drift from the platform's; check NTP",
            detail=detail,
        )


def skew_seconds(date_header: str | None, received: float, elapsed: float) -> float | None:
    """The server's clock minus ours, from one answer: its ``Date`` (whole seconds, written while
    the request was at the server) against the middle of the exchange; None without a usable Date."""
    if not date_header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    # The header truncates to the second: its middle is half a second later.
    return when.timestamp() + 0.5 - (received - max(elapsed, 0.0) / 2)
