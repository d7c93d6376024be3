"""Callback listeners and push mode: what the platform does after ``startCallbacks``.

* ``POST /m2m/v1/callbacks/{aname}`` registers (replaces) the listener of one service;
  ``GET`` lists them (passwords in clear, as the platform does); ``DELETE .../name/{service}``
  removes one.
* ``PUT /m2m/v1/sms/{aname}/startCallbacks`` with an ``EnhancedConnectivityService`` listener turns
  push mode on for the account: every queued message is taken out of the history queue and
  POSTed to the listener, one callback per message, and messages injected later are pushed
  instead of queued. Without such a listener it changes nothing (the answer is still success).
* A delivery is a success on a 2xx. Any other answer, a refused connection or a timeout is
  retried ``callback_attempts - 1`` more times, ``callback_retry_seconds`` apart (minutes on the
  platform; tests scale it down). A message whose every attempt failed goes back to the history
  queue, where only polling (or another ``startCallbacks``) finds it. Removing the listener makes
  the remaining deliveries fail the same way.
* ``callback_duplicate_rate`` delivers a delivered callback again (the same body: a redelivery);
  ``callback_reorder`` shuffles each batch; ``lose_answers(n)`` treats the next ``n`` 2xx answers
  as failures (a 2xx lost on the way back), so the message is retried and may also be polled.
* ``callback_shape``: ``"envelope"`` (the Connectivity callback envelope with the history message
  under ``enhancedConnectivityResponse``), or ``"flat"`` (the only published SMS example: username,
  password, device ids and text, with no timestamp and no request id).

One daemon thread delivers, one callback at a time in due order; ``wait_idle`` lets a test wait
until nothing is pending without sleeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import http.client
import itertools
import json
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

from sync_worker.simulator import settings, wire

SMS_SERVICE: Final = "EnhancedConnectivityService"
MAX_CREDENTIAL_LENGTH: Final = 40


@dataclasses.dataclass(frozen=True, slots=True)
class Listener:
    url: str
    username: str | None
    password: str | None


@dataclasses.dataclass(slots=True)
class Delivery:
    account: str
    message: Any
    request_id: str
    attempt: int = 1
    redelivery: bool = False


@dataclasses.dataclass(slots=True)
class PushCounters:
    attempts: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    requeued: int = 0
    duplicates: int = 0
    lost_answers: int = 0


class Pusher:
    """Listeners, the push-mode accounts and the delivery thread of one simulator."""

    def __init__(
        self,
        config: settings.SimConfig,
        requeue: Callable[[str, list[Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._requeue = requeue
        self._clock = clock
        self._lock = threading.Condition()
        self._listeners: dict[tuple[str, str], Listener] = {}
        self._active: set[str] = set()
        self._pending: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._lose = 0
        self._random = random.Random(config.callback_seed)
        self._delivered: dict[str, list[Any]] = {}
        self.counters = PushCounters()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the API side --

    def register(self, account: str, body: bytes) -> wire.Reply:
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        problem = _register_problem(req)
        if problem is not None:
            return wire.json_reply(400, wire.m2m_error(wire.CODE_INVALID_REQUEST, problem))
        assert isinstance(req, dict)  # noqa: S101  # for mypy: _register_problem checked it
        with self._lock:
            self._listeners[(account, req["name"])] = Listener(
                req["url"], req.get("username"), req.get("password")
            )
        return _action(account, req["name"])

    def listing(self, account: str) -> wire.Reply:
        with self._lock:
            found = [
                {
                    "accountName": account,
                    "serviceName": service,
                    "url": listener.url,
                    "username": listener.username,
                    "password": listener.password,
                }
                for (name, service), listener in sorted(self._listeners.items())
                if name == account
            ]
        return wire.json_reply(200, wire.dumps(found))

    def deregister(self, account: str, service: str) -> wire.Reply:
        with self._lock:
            removed = self._listeners.pop((account, service), None)
            if service == SMS_SERVICE:
                self._active.discard(account)
            self._lock.notify_all()
        if removed is None:
            return wire.json_reply(
                400, wire.m2m_error(wire.CODE_INVALID_REQUEST, f"No callback registered for {service}.")
            )
        return _action(account, service)

    def start(self, account: str, take_queued: Callable[[], list[Any]]) -> None:
        """``startCallbacks``: push mode on, and the queued messages pushed (when a listener exists)."""
        with self._lock:
            if (account, SMS_SERVICE) not in self._listeners:
                return
            self._active.add(account)
            self._ensure_thread()
        self.push(account, take_queued())

    def active(self, account: str) -> bool:
        with self._lock:
            return account in self._active

    def push(self, account: str, messages: Iterable[Any]) -> None:
        batch = [Delivery(account, m, str(uuid.uuid4())) for m in messages]
        if self._config.callback_reorder:
            self._random.shuffle(batch)
        now = self._clock()
        with self._lock:
            for delivery in batch:
                heapq.heappush(self._pending, (now, next(self._seq), delivery))
            self._lock.notify_all()

    def lose_answers(self, n: int) -> None:
        """Treat the next ``n`` 2xx answers as failed deliveries (the 2xx was lost)."""
        with self._lock:
            self._lose += n

    def delivered(self, account: str) -> list[Any]:
        """Messages whose callback was answered 2xx (a redelivered one appears once per 2xx)."""
        with self._lock:
            return list(self._delivered.get(account, []))

    def wait_idle(self, timeout: float) -> bool:
        """Block until no delivery is pending or in flight (True) or ``timeout`` passes (False)."""
        with self._lock:
            return bool(self._lock.wait_for(lambda: not self._pending and not self._in_flight, timeout))

    def wait_for(self, condition: Callable[[PushCounters], bool], timeout: float) -> bool:
        """Block until ``condition(counters)`` holds (True) or ``timeout`` passes (False)."""
        with self._lock:
            return bool(self._lock.wait_for(lambda: condition(self.counters), timeout))

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- the delivery thread --

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="simulator-push", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                delivery = self._next_due()
                if delivery is None:
                    continue
                listener = self._listeners.get((delivery.account, SMS_SERVICE))
                self._in_flight += 1
            ok = False
            try:
                ok = listener is not None and self._post(listener, delivery)
            finally:
                self._finish(delivery, ok=ok)

    def _next_due(self) -> Delivery | None:
        """The next due delivery, or None after waiting (called with the lock held)."""
        if not self._pending:
            self._lock.wait(0.5)
            return None
        due = self._pending[0][0] - self._clock()
        if due > 0:
            self._lock.wait(due)
            return None
        return heapq.heappop(self._pending)[2]

    def _post(self, listener: Listener, delivery: Delivery) -> bool:
        body = self._body(listener, delivery)
        parts = urllib.parse.urlsplit(listener.url)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(parts.hostname or "", parts.port, timeout=self._config.callback_timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        with self._lock:
            self.counters.attempts += 1
            self._lock.notify_all()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            status = conn.getresponse().status
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            with contextlib.suppress(OSError):
                conn.close()
        return 200 <= status < 300

    def _body(self, listener: Listener, delivery: Delivery) -> bytes:
        message = delivery.message
        envelope: dict[str, Any] = {"username": listener.username, "password": listener.password}
        devices = message.get("deviceIds") if isinstance(message, dict) else None
        if self._config.callback_shape == "flat":
            envelope["deviceIds"] = devices
            envelope["message"] = message.get("message") if isinstance(message, dict) else message
        else:
            envelope.update(
                {
                    "requestId": delivery.request_id,
                    "deviceIds": devices,
                    "enhancedConnectivityResponse": message,
                    "callbackCount": delivery.attempt,
                    "maxCallbackThreshold": self._config.callback_attempts,
                }
            )
        return wire.dumps(envelope)

    def _finish(self, delivery: Delivery, *, ok: bool) -> None:
        requeue = False
        with self._lock:
            if ok and self._lose > 0:
                self._lose -= 1
                self.counters.lost_answers += 1
                ok = False
            if ok:
                self.counters.delivered += 1
                self._delivered.setdefault(delivery.account, []).append(delivery.message)
                rate = self._config.callback_duplicate_rate
                if not delivery.redelivery and rate > 0 and self._random.random() < rate:
                    self.counters.duplicates += 1
                    again = dataclasses.replace(delivery, redelivery=True)
                    heapq.heappush(self._pending, (self._clock(), next(self._seq), again))
            else:
                self.counters.failed_attempts += 1
                if delivery.attempt < self._config.callback_attempts:
                    retry = dataclasses.replace(delivery, attempt=delivery.attempt + 1)
                    due = self._clock() + self._config.callback_retry_seconds
                    heapq.heappush(self._pending, (due, next(self._seq), retry))
                elif not delivery.redelivery:
                    self.counters.requeued += 1
                    requeue = True
        if requeue:
            self._requeue(delivery.account, [delivery.message])
        # Idle only once a failed message is back in the queue, so a waiter then finds it there.
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()


def _register_problem(req: Any) -> str | None:
    if not isinstance(req, dict):
        return "The request body is not a JSON object."
    if not isinstance(req.get("name"), str) or not req["name"]:
        return "name is required."
    if not isinstance(req.get("url"), str) or not req["url"].startswith(("https://", "http://")):
        return "url is required."
    for key in ("username", "password"):
        value = req.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_CREDENTIAL_LENGTH):
            return f"{key} must be a string of at most {MAX_CREDENTIAL_LENGTH} characters."
    return None


def _action(account: str, service: str) -> wire.Reply:
    return wire.json_reply(200, wire.dumps({"accountName": account, "serviceName": service}))
