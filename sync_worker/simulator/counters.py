"""Counters and the request log."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Final


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    query: str
    status: int | None  # None when no response was written (timeout, lost response)
    kind: str


class Stats:
    """Counters and a request log. Never holds credentials or tokens other than ``next``."""

    COUNTERS: Final = (
        "token_requests",
        "token_revocations",
        "login_attempts",
        "logins",
        "failed_logins",
        "logouts",
        "history_requests",
        "acks",
        "replays",
        "final_dequeues",
        "sends",
        "start_callbacks",
        "callback_requests",
    )

    def __init__(self, log_size: int, settle: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._settle = settle
        self.token_requests = 0
        self.token_revocations = 0
        self.login_attempts = 0
        self.logins = 0
        self.failed_logins = 0
        self.logouts = 0
        self.history_requests = 0
        self.acks = 0
        self.replays = 0
        self.final_dequeues = 0
        self.sends = 0
        self.start_callbacks = 0
        self.callback_requests = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self._requests: collections.deque[RequestRecord] = collections.deque(maxlen=log_size)

    @property
    def requests(self) -> collections.deque[RequestRecord]:
        """The request log, once every reply already on the wire has been logged."""
        # A client holds its response before the server thread logs the request; without
        # the wait, a test reading the log right after a call could miss that call.
        if self._settle is not None:
            self._settle()
        return self._requests

    def bump(self, name: str, by: int = 1) -> None:
        with self._changed:
            setattr(self, name, getattr(self, name) + by)
            self._changed.notify_all()

    def wait_for(self, name: str, at_least: int, timeout: float) -> bool:
        """Block until counter ``name`` reaches ``at_least`` (True) or ``timeout`` passes (False).

        Counters are bumped when a request arrives, before it is answered: a test can wait here
        for a request to be in flight.
        """
        with self._changed:
            return bool(self._changed.wait_for(lambda: getattr(self, name) >= at_least, timeout=timeout))

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def record(self, rec: RequestRecord) -> None:
        self._requests.append(rec)  # deque.append is atomic

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
            out["faults"] = dict(self.faults)
            return out


# The counter each request kind bumps on arrival (faulted or not).
COUNTER_FOR: Final = {
    "token": "token_requests",
    "revoke": "token_revocations",
    "login": "login_attempts",
    "logout": "logouts",
    "send": "sends",
    "history": "history_requests",
    "start_callbacks": "start_callbacks",
    "register_callback": "callback_requests",
    "list_callbacks": "callback_requests",
    "deregister_callback": "callback_requests",
}
