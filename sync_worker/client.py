"""HTTP client for the ThingSpace SMS API, with the vendor SDK's operation names.

``ThingSpaceClient(cfg).sms`` offers ``send_sms_to_device``,
``list_devices_sms_messages``, ``start_queued_sms_delivery`` and
``iter_history_blocks``; ``.callbacks`` offers ``list_registered_callbacks``,
``register_callback`` and ``deregister_callback``. Decisions worth knowing:

* ``error_code`` of an M2M error is its ``errorCode`` without the service prefix:
  ``UnifiedWebService.REQUEST_FAILED.AccountNotFound`` becomes
  ``REQUEST_FAILED.AccountNotFound``. The prefix is recognised as a first
  dot-separated part that is not UPPER_CASE followed by one that is (service
  names are CamelCase, the categories after them are upper case), so a code sent
  without a prefix (``SessionToken.Expired``) is kept whole. Session expiry is
  detected with ``endswith("SessionToken.Expired")``, so either form matches.
  Gateway faults give their numeric ``fault.code`` as a string; OAuth errors
  give ``error``.
* A 200/202 history answer counts as the block only when ``gate.recognise`` says so
  (see ``gate``): one top-level object, no member twice, a ``messages`` list, a
  boolean ``hasMoreData``, and status, ``hasMoreData`` and ``Location`` agreeing.
  Any other answer (cut short, not JSON, empty, ``messages`` missing or renamed, a
  202 with no message, a 200 with ``hasMoreData: true``...) is a transient fault
  first: ``errors.UnreadableAnswerError``
  re-sends the *same* request under the retry policy, and the ``next`` token of
  the unreadable answer is never followed. Only when every attempt came back
  unreadable does it become ``errors.MalformedBlockError`` (raw bytes and the
  block's ``next``), which the sync quarantines before moving on. When the
  deadline cuts the attempts short the transient error is raised instead (the
  run fails and a later one asks again). A bad ``Location`` stays an
  ``errors.UnsafeLocationError`` (nothing could be acknowledged safely).
* Paging: a 202 must carry a valid ``next`` token in ``Location``, ``hasMoreData:
  true`` and at least one message; a 200 is the final block (``next`` is None) with
  ``hasMoreData: false``. A disagreement makes the answer unreadable (above), so a
  token is never followed on the word of an answer that contradicts itself. Unknown
  extra top-level members are read past, logged once per process per name and
  counted (``on_unknown_member`` of the observer, when it has one).
* ``iter_history_blocks`` sends a block's ``next`` (which acknowledges it) only
  through ``gate.release(page.ticket)``: after ``store.commit_block`` committed the
  block's messages or ``store.quarantine_block`` kept it; otherwise it raises
  ``errors.AcknowledgementRefusedError`` and sends nothing.
* ``Location`` is never followed: only its ``next`` query value is taken, the path
  is ignored, and an absolute ``Location`` must name the base URL's scheme, host
  and port. Redirects are never followed either (a request goes straight to the
  session's mounted adapter, which never follows one): a 3xx would carry the bearer
  and session tokens wherever it pointed.
* Every exchange (token, login, API call) ends within ``total_timeout``, connect,
  headers and body together, however slowly the answer trickles in (the read timeout
  only bounds each wait): see "the total deadline of one exchange" below. An API call
  is also cut at the run's ``deadline`` (and not sent past it); a token request or a
  login never is. A timed-out exchange is an ``errors.ApiTransientError`` and its
  connection is closed. A body over ``max_body_bytes`` is unreadable.
* Every session login goes through the login guard (``cfg.login_guard``, else an
  in-process ``auth.MemoryLoginGuard`` with threshold 1): counted before it is
  sent, then reported as succeeded, refused (a 4xx other than 408/429: raises
  ``errors.LoginFailedError``), throttled (408/429: ``errors.LoginThrottledError``,
  not counted, retried by the policy after ``Retry-After``) or unknown (no answer,
  a 5xx, an unreadable answer: counted as failed). Refused and unknown logins are
  never retried by the policy (errors from the token and login requests carry their
  own operation name, and a policy only retries errors of the operation it runs).
* The OAuth token is fetched before the login is counted: a token failure is no
  login attempt. Credentials come from ``cfg.credentials()`` when set, at every
  token fetch and login, so a corrected secret file is used without a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import functools
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

import requests
import requests.adapters
import requests.cookies
import requests.hooks
import requests.structures
import requests.utils
import structlog
import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager

from sync_worker import auth, errors, gate, models, retry, secret, urls

USER_AGENT: Final = "thingspace-sms-sync/0.1"
DEFAULT_TOTAL_TIMEOUT: Final = 120.0
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_TOKEN_LENGTH: Final = 64
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9]+")
_SESSION_EXPIRED_SUFFIX: Final = "SessionToken.Expired"
_UPPER_CATEGORY_RE: Final = re.compile(r"^[A-Z0-9_]+$")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What str.isspace() calls whitespace, the C0 controls and DEL: none belongs in a Location.
_UNSAFE_LOCATION_RE: Final = re.compile(r"[\s\x00-\x1f\x7f]")

# Sent with every request (after the session's own headers, before the call's).
_FIXED_HEADERS: Final = {"User-Agent": USER_AGENT, "Accept": "application/json"}
_HEADER_CACHE_SIZE: Final = 8

_log = structlog.get_logger(__name__)
T = TypeVar("T")


class Observer(Protocol):
    """Metrics hook: one ``on_request`` per HTTP exchange, one ``on_retry`` per planned retry."""

    def on_request(self, operation: str, status: int | None, seconds: float) -> None: ...

    def on_retry(self, operation: str, reason: str, wait: float) -> None: ...


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str
    client_id: str
    client_secret: secret.Secret
    username: str
    password: secret.Secret
    timeout: tuple[float, float] = (5.0, 60.0)  # connect, read (each socket read)
    # One exchange, connect, headers and body together, never takes longer (see _Watchdog).
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    # A larger body is unreadable (history answers hold at most 100 messages).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry: retry.RetryPolicy = dataclasses.field(default_factory=retry.RetryPolicy)
    login_guard: auth.LoginGuard | None = dataclasses.field(default=None, repr=False, compare=False)
    # The current credentials, read at each token fetch and login (the fields above otherwise).
    credentials: Callable[[], auth.Credentials] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    allow_insecure_loopback: bool = False
    session: requests.Session | None = dataclasses.field(default=None, repr=False, compare=False)
    observer: Observer | None = dataclasses.field(default=None, repr=False, compare=False)
    # Renew the bearer this long before the server says it expires.
    token_expiry_margin: float = 60.0
    clock: Callable[[], float] = dataclasses.field(default=time.monotonic, repr=False, compare=False)
    pool_size: int = 10


class ThingSpaceClient:
    """One pooled HTTP session, the cached credentials, and ``.sms``. Thread-safe."""

    def __init__(self, cfg: ClientConfig) -> None:
        self._base = _checked_base_url(cfg)
        _check_credentials(cfg)
        self._cfg = cfg
        self._owns_http = cfg.session is None
        self._http = cfg.session if cfg.session is not None else requests.Session()
        if self._owns_http:
            adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=cfg.pool_size)
            self._http.mount("https://", adapter)
            self._http.mount("http://", adapter)
            _environment_once(self._http, self._base)
        # A CA bundle path from a caller's session is honoured; verify=False never is.
        bundle = self._http.verify
        self._verify: bool | str = bundle if isinstance(bundle, str) and bundle else True
        # Proxies, CA bundle and client certificate, as Session.request merged them on every
        # call: every request goes to the base URL's host, so once is enough. For a caller's
        # session that trusts the environment this reads it here, by requests' own rules.
        settings = self._http.merge_environment_settings(self._base, {}, False, self._verify, None)
        self._header_cache: dict[tuple[Any, ...], requests.structures.CaseInsensitiveDict[Any]] = {}
        self._send_settings: dict[str, Any] = {
            # The body is read by _read_body, against the exchange's deadline and the size cap.
            "stream": True,
            "verify": settings["verify"],
            "proxies": settings["proxies"],
            "cert": settings["cert"],
        }
        self._bearer = auth.BearerTokenCache(
            self._fetch_bearer, margin=cfg.token_expiry_margin, clock=cfg.clock
        )
        self._guard: auth.LoginGuard = (
            cfg.login_guard if cfg.login_guard is not None else auth.MemoryLoginGuard()
        )
        self._session = auth.SessionTokenCache(self._log_in)
        self.sms = SmsController(self)
        self.callbacks = ConnectivityCallbacksController(self)

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def observer(self) -> Observer | None:
        return self._cfg.observer

    @property
    def allow_insecure_loopback(self) -> bool:
        return self._cfg.allow_insecure_loopback

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ThingSpaceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ThingSpaceClient(base_url={self._base!r}, username={self._cfg.username!r})"

    # --- one HTTP exchange --------------------------------------------------

    def _exchange(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        data: dict[str, str] | None = None,
        json_body: Any = None,
        auth: tuple[str, str] | None = None,
        run_deadline: float | None = None,
    ) -> requests.Response:
        """One request and its whole answer, within ``total_timeout`` and ``run_deadline``.

        ``run_deadline`` is a ``retry.clock()`` value (the run budget's end). Token and login
        exchanges get none: cutting a login short would only make an unknown outcome the
        login guard counts, and a login takes at most ``total_timeout`` anyway.
        """
        started = time.perf_counter()
        seconds, limit = self._exchange_budget(run_deadline)
        if seconds <= 0:
            raise errors.ApiTransientError(
                f"request to {_host_port(url)} not sent: the run budget has ended", operation=operation
            )
        exchange = _Exchange(time.monotonic() + seconds)
        _WATCHDOG.watch(exchange)
        try:
            response = self._send(
                method, url, headers, data=data, json_body=json_body, auth=auth, exchange=exchange
            )
        except requests.RequestException as exc:
            # A socket timeout at the deadline is the deadline too.
            cut = _WATCHDOG.unwatch(exchange) or time.monotonic() >= exchange.deadline
            self._observe(operation, None, started)
            raise _request_error(exc, operation, url, cut=cut, seconds=seconds, limit=limit) from exc
        except BaseException:
            _WATCHDOG.unwatch(exchange)
            raise
        if _WATCHDOG.unwatch(exchange):
            # The deadline passed as the answer ended: its end may be the cut, not the server's.
            _discard(response)
            self._observe(operation, None, started)
            raise _deadline_error(operation, url, seconds, limit)
        self._observe(operation, response.status_code, started)
        return response

    def _exchange_budget(self, run_deadline: float | None) -> tuple[float, str]:
        """Seconds the next exchange may take, and what limits it (for the error message)."""
        total = self._cfg.total_timeout
        if run_deadline is None:
            return total, "total timeout"
        left = run_deadline - self._cfg.retry.clock()
        return (left, "run budget") if left < total else (total, "total timeout")

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        data: dict[str, str] | None,
        json_body: Any,
        auth: tuple[str, str] | None,
        exchange: _Exchange,
    ) -> requests.Response:
        """What ``Session.request`` did, through the session's mounted adapter, minus its per-call merges.

        ``Session.request`` merged the environment, session settings and cookies again on every
        call (with the headers checked once, preparing and handing over a request costs about a
        quarter of what it did: 0.03 against 0.10 ms); those are fixed for the client's life and
        settled in ``__init__``. Kept from the session
        as before: its headers (ours win), params, auth (the request's wins), cookies (sent, and
        updated from ``Set-Cookie``), response hooks, and the adapter mounted for the URL, which
        raises requests' own exceptions. Redirects are not followed, as before; the body is read
        here (``_read_body``) so a connection cut mid-body is the same network error as before.
        The socket timeouts never exceed what is left of the exchange's deadline, and the
        connection is known to the watchdog (``_current``) while headers and body arrive.
        """
        http = self._http
        prepared = requests.PreparedRequest()
        # PreparedRequest.prepare's steps, in its order; the headers come checked from a cache.
        prepared.prepare_method(method)
        prepared.prepare_url(url, http.params or None)
        prepared.headers = self._checked_headers(headers)
        if len(http.cookies):  # an empty jar adds no Cookie header
            prepared.prepare_cookies(http.cookies)
        prepared.prepare_body(data or {}, None, json_body)
        prepared.prepare_auth(auth if auth is not None else http.auth, url)
        prepared.prepare_hooks(http.hooks)
        left = exchange.deadline - time.monotonic()
        connect, read = self._cfg.timeout
        timeout = (min(connect, left), min(read, left))
        _current.exchange = exchange
        try:
            started = time.perf_counter()
            response = http.get_adapter(url).send(prepared, timeout=timeout, **self._send_settings)
            response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
            if exchange.sock is None:
                # A caller's session without our adapter: the body phase is still watched.
                _WATCHDOG.attach(exchange, _socket_of(response))
            try:
                hooked: requests.Response = requests.hooks.dispatch_hook(  # type: ignore[no-untyped-call]
                    "response", prepared.hooks, response
                )
                response = hooked
                if "Set-Cookie" in response.headers:
                    requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
                        http.cookies, prepared, response.raw
                    )
                _read_body(response, self._cfg.max_body_bytes)
            except BaseException:
                _discard(response)  # never back to the pool half-read
                raise
        finally:
            _current.exchange = None
        return response

    def _checked_headers(self, headers: dict[str, str]) -> requests.structures.CaseInsensitiveDict[Any]:
        """The session's headers, ours, then the call's, checked as requests checks them; a copy.

        The same few combinations recur on every call (the tokens change rarely), and checking
        each header's validity cost more than the rest of preparing a request: checked ones are
        kept (a handful at most). A header requests refuses raises ``InvalidHeader`` every time.
        """
        key = (tuple(self._http.headers.items()), tuple(headers.items()))
        try:
            checked = self._header_cache.get(key)
        except TypeError:  # an unhashable header value: requests refuses it, as before
            return self._merged_and_checked(headers)
        if checked is None:
            checked = self._merged_and_checked(headers)
            if len(self._header_cache) >= _HEADER_CACHE_SIZE:
                self._header_cache.clear()  # old tokens: their combinations never come back
            self._header_cache[key] = checked
        return checked.copy()

    def _merged_and_checked(self, headers: dict[str, str]) -> requests.structures.CaseInsensitiveDict[Any]:
        merged = requests.structures.CaseInsensitiveDict(self._http.headers)
        merged.update(_FIXED_HEADERS)
        merged.update(headers)
        for name in [k for k, v in merged.items() if v is None]:
            del merged[name]  # a session header set to None is removed, as requests does
        probe = requests.PreparedRequest()
        probe.prepare_headers(merged)
        return probe.headers

    def _observe(self, operation: str, status: int | None, started: float) -> None:
        if self._cfg.observer is not None:
            self._cfg.observer.on_request(operation, status, time.perf_counter() - started)

    # --- credentials ---------------------------------------------------------

    def _credentials(self) -> auth.Credentials:
        if self._cfg.credentials is not None:
            return self._cfg.credentials()
        cfg = self._cfg
        return auth.Credentials(cfg.client_id, cfg.client_secret, cfg.username, cfg.password)

    def _fetch_bearer(self) -> tuple[str, float]:
        operation = "oauth_token"
        creds = self._credentials()
        response = self._exchange(
            operation,
            "POST",
            f"{self._base}/ts/v1/oauth2/token",
            {},
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret.reveal()),
        )
        if not 200 <= response.status_code < 300:
            raise error_from_response(response, operation)
        body = _json_object(response, operation)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise errors.ResponseFormatError(
                "token response has no 'access_token'", status=response.status_code, operation=operation
            )
        secret.register(token)
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise errors.ResponseFormatError(
                "token response 'token_type' is not Bearer", status=response.status_code, operation=operation
            )
        expires_in = body.get("expires_in", 3600)
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)
        # 0 is the platform's countdown in a token's last second (the same token until its hour ends).
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or not math.isfinite(expires_in)
            or expires_in < 0
        ):
            raise errors.ResponseFormatError(
                "token response 'expires_in' is not a number of seconds",
                status=response.status_code,
                operation=operation,
            )
        return token, float(expires_in)

    def _log_in(self, deadline: float | None) -> str:
        operation = "session_login"
        creds = self._credentials()
        bearer = self._bearer.get()
        # After the token request: a pass computes the (slow) fingerprint ahead, meanwhile.
        fingerprint = creds.fingerprint(self._base)
        attempt = self._guard.begin(fingerprint, deadline=deadline)
        outcome: auth.Outcome = "unknown"
        failure: BaseException | None = None
        try:
            response = self._exchange(
                operation,
                "POST",
                f"{self._base}/m2m/v1/session/login",
                {"Authorization": f"Bearer {bearer}"},
                json_body={"username": creds.username, "password": creds.password.reveal()},
            )
            status = response.status_code
            if status in (408, 429):
                outcome = "throttled"
                raise errors.LoginThrottledError(
                    "session login throttled: not a verdict on the credentials, not counted; "
                    "logging in again after a pause",
                    status=status,
                    retry_after=parse_retry_after(
                        response.headers.get("Retry-After"), now=_server_date(response)
                    ),
                    operation=operation,
                )
            if 400 <= status < 500:
                if status == 401:
                    # Whatever refused it, the next login should not reuse this bearer.
                    self._bearer.invalidate(bearer)
                found = error_from_response(response, operation)
                outcome = "refused"
                raise errors.LoginFailedError(
                    "session login refused; counted by the login guard and not retried now, because "
                    "five failed logins in a row lock the ThingSpace user until vendor support unlocks it",
                    status=status,
                    error_code=found.error_code,
                    error_message=found.error_message,
                    operation=operation,
                )
            if not 200 <= status < 300:
                # A 5xx may come after the platform judged the login: counted as failed.
                raise error_from_response(response, operation)
            token = _json_object(response, operation).get("sessionToken")
            if not isinstance(token, str) or not token:
                raise errors.ResponseFormatError(
                    "login response has no 'sessionToken'", status=status, operation=operation
                )
            secret.register(token)
            outcome = "succeeded"
            return token
        except BaseException as exc:
            failure = exc
            if outcome == "refused":
                _log.error("thingspace_login_refused", status=getattr(exc, "status", None))
            elif outcome == "unknown":
                _log.warning("thingspace_login_outcome_unknown", error=type(exc).__name__)
            raise
        finally:
            self._guard.finish(attempt, fingerprint, outcome, failure)

    # --- the two credentials on their own (``sync-worker doctor``) -------------

    def fetch_bearer(self) -> None:
        """Get the OAuth token now, as the first API call would (no login; the guard sees nothing).

        Lets a caller tell an OAuth failure from a login failure before any data call.
        """
        self._bearer.get()

    def log_in(self, deadline: float | None = None) -> None:
        """Start the session now, through the login guard exactly as the first API call would
        (nothing is done when a session is held already)."""
        self._session.get(deadline)

    # --- an authenticated API call -------------------------------------------

    def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        retryable: bool,
        deadline: float | None = None,
        cursor_sent: bool = False,
        json_body: Any = None,
    ) -> requests.Response:
        """Send one API request (with retries when ``retryable``) and return its 2xx response."""
        return self.call_and_read(
            operation,
            method,
            path,
            _identity,
            retryable=retryable,
            deadline=deadline,
            cursor_sent=cursor_sent,
            json_body=json_body,
        )[0]

    def call_and_read(
        self,
        operation: str,
        method: str,
        path: str,
        read: Callable[[requests.Response], T],
        *,
        retryable: bool,
        deadline: float | None = None,
        cursor_sent: bool = False,
        json_body: Any = None,
    ) -> tuple[T, int]:
        """Like ``call``, with ``read`` applied to each 2xx answer inside the retry loop.

        A transient error from ``read`` (an unreadable body) re-sends the same
        request like a 503 would. Returns what ``read`` returned and the number
        of attempts made; a raised ``UnreadableAnswerError`` carries that number as ``attempts``.
        """
        url = f"{self._base}{path}"
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            session_replayed = bearer_replayed = False
            while True:
                if deadline is not None and self._cfg.retry.clock() >= deadline:
                    # No token request or login is started for a call that could not be sent.
                    raise errors.ApiTransientError(
                        f"request to {_host_port(url)} not sent: the run budget has ended",
                        operation=operation,
                    )
                bearer = self._bearer.get()
                session_token = self._session.get(deadline)
                response = self._exchange(
                    operation,
                    method,
                    url,
                    {"Authorization": f"Bearer {bearer}", "VZ-M2M-Token": session_token},
                    json_body=json_body,
                    run_deadline=deadline,
                )
                if 200 <= response.status_code < 300:
                    return read(response)
                error = error_from_response(response, operation, cursor_sent=cursor_sent)
                if is_session_expired(error) and not session_replayed:
                    session_replayed = True
                    _log.info("thingspace_session_expired", operation=operation)
                    self._session.invalidate(session_token)
                    continue
                if response.status_code == 401 and not bearer_replayed:
                    bearer_replayed = True
                    _log.info("thingspace_bearer_rejected", operation=operation)
                    self._bearer.invalidate(bearer)
                    continue
                raise error

        def retry_on(exc: BaseException) -> bool:
            if not retryable:
                return False
            # A throttled login was not counted, so logging in again after the pause is safe.
            if isinstance(exc, errors.LoginThrottledError):
                return True
            return isinstance(exc, errors.ApiTransientError) and exc.operation == operation

        try:
            result = self._cfg.retry.call(
                attempt,
                operation=operation,
                retry_on=retry_on,
                deadline=deadline,
                observer=self._cfg.observer,
            )
        except errors.UnreadableAnswerError as exc:
            exc.attempts = attempts
            raise
        return result, attempts

    @property
    def max_attempts(self) -> int:
        return self._cfg.retry.max_attempts


class SmsController:
    """The SMS operations, named as in the vendor SDK's ``SmsController``."""

    def __init__(self, client: ThingSpaceClient) -> None:
        self._client = client

    def send_sms_to_device(self, request: models.SMSSendRequest) -> models.DeviceManagementResult:
        """POST ``/m2m/v1/sms``. Never retried: a retry could text the devices twice."""
        request.validate()
        operation = "send_sms_to_device"
        response = self._client.call(
            operation, "POST", "/m2m/v1/sms", retryable=False, json_body=request.to_wire()
        )
        return _parse(response, operation, models.DeviceManagementResult.from_wire)

    def start_queued_sms_delivery(self, account_name: str) -> models.ConnectivityManagementSuccessResult:
        """PUT ``/m2m/v1/sms/{aname}/startCallbacks``."""
        _check_account(account_name)
        operation = "start_queued_sms_delivery"
        response = self._client.call(
            operation, "PUT", f"/m2m/v1/sms/{_quote(account_name)}/startCallbacks", retryable=True
        )
        return _parse(response, operation, models.ConnectivityManagementSuccessResult.from_wire)

    def list_devices_sms_messages(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> models.HistoryPage:
        """GET one history block. Sending ``next`` acknowledges the block it came with."""
        _check_account(account_name)
        path = f"/m2m/v1/sms/{_quote(account_name)}/history"
        if next is not None:
            if not valid_token(next):
                raise errors.ValidationError(
                    f"next token {_preview(next)} is not 1-{MAX_TOKEN_LENGTH} letters or digits"
                )
            path += f"?next={next}"
        operation = "list_devices_sms_messages"

        def read(response: requests.Response) -> models.HistoryPage:
            return _read_history(response, account_name, next, self._client.base_url, self._client.observer)

        try:
            page, _ = self._client.call_and_read(
                operation, "GET", path, read, retryable=True, deadline=deadline, cursor_sent=next is not None
            )
        except errors.UnreadableAnswerError as exc:
            if exc.attempts < self._client.max_attempts:
                # The deadline or a Retry-After cap ended the attempts early: a
                # later run asks again rather than give up on the block.
                raise
            _log.warning(
                "thingspace_history_unreadable_after_attempts",
                account=account_name,
                attempts=exc.attempts,
                problem=exc.block.problem,
            )
            if exc.paging_error is not None:
                raise exc.paging_error from exc
            raise exc.block from exc
        return page

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        """Yield blocks; block N+1 (whose request acknowledges block N) is fetched only when asked
        for, and only once block N's ticket is settled (``gate.release``)."""
        token = next
        while True:
            page = self.list_devices_sms_messages(account_name, token, deadline=deadline)
            yield page
            if page.next is None:
                return
            # The request for the next block acknowledges this one: the gate lets its token
            # out only once the caller committed (or quarantined) the block.
            token = gate.release(page.ticket)


class ConnectivityCallbacksController:
    """Callback listeners, named as in the vendor SDK's ``ConnectivityCallbacksController``.

    Like the SDK, only the GET is retried: a POST or DELETE that timed out may have landed.
    """

    def __init__(self, client: ThingSpaceClient) -> None:
        self._client = client

    def list_registered_callbacks(self, account_name: str) -> list[models.CallbackListener]:
        """GET ``/m2m/v1/callbacks/{aname}``: every listener of the account (passwords as ``Secret``)."""
        _check_account(account_name)
        operation = "list_registered_callbacks"
        response = self._client.call(
            operation, "GET", f"/m2m/v1/callbacks/{_quote(account_name)}", retryable=True
        )
        return _parse(response, operation, _listeners)

    def register_callback(
        self, account_name: str, body: models.RegisterCallbackRequest
    ) -> models.CallbackActionResult:
        """POST ``/m2m/v1/callbacks/{aname}``: replaces whatever listener the service had."""
        _check_account(account_name)
        body.validate(allow_insecure_loopback=self._client.allow_insecure_loopback)
        operation = "register_callback"
        response = self._client.call(
            operation,
            "POST",
            f"/m2m/v1/callbacks/{_quote(account_name)}",
            retryable=False,
            json_body=body.to_wire(),
        )
        return _parse(response, operation, models.CallbackActionResult.from_wire)

    def deregister_callback(self, account_name: str, service_name: str) -> models.CallbackActionResult:
        """DELETE ``/m2m/v1/callbacks/{aname}/name/{service}``."""
        _check_account(account_name)
        operation = "deregister_callback"
        response = self._client.call(
            operation,
            "DELETE",
            f"/m2m/v1/callbacks/{_quote(account_name)}/name/{_quote(service_name)}",
            retryable=False,
        )
        return _parse(response, operation, models.CallbackActionResult.from_wire)


def _listeners(obj: Any) -> list[models.CallbackListener]:
    if not isinstance(obj, list):
        raise errors.ResponseFormatError("callback listing is not a JSON array")
    return [models.CallbackListener.from_wire(item) for item in obj]


def _read_history(
    response: requests.Response,
    account_name: str,
    request_next: str | None,
    base_url: str,
    observer: Observer | None = None,
) -> models.HistoryPage:
    """One 2xx history answer as a page, if ``gate.recognise`` says it is the block; anything
    else is a transient ``UnreadableAnswerError``."""
    operation = "list_devices_sms_messages"
    status = response.status_code
    if status not in (200, 202):
        raise errors.ResponseFormatError(
            "history answered with an unexpected success status", status=status, operation=operation
        )
    new_next: str | None = None
    paging_error: errors.ResponseFormatError | None = None
    if status == 202:
        location = response.headers.get("Location")
        try:
            if location is None:
                raise errors.UnsafeLocationError("history answered 202 without a Location header")
            new_next = next_token_from_location(location, base_url)
        except errors.UnsafeLocationError as exc:
            paging_error = errors.UnsafeLocationError(str(exc), status=status, operation=operation)
    body = response.content
    try:
        cap = body_over_cap(response)
        if cap is not None:
            # Only the first bytes were kept: whatever they parse as, they are not the block.
            raise errors.ResponseFormatError(f"history body is larger than {cap} bytes")
        envelope = gate.read_envelope(body)
        if paging_error is not None:
            # A readable body with a bad Location: nothing can be acknowledged safely, and
            # asking again would not make the Location any safer.
            raise paging_error
        gate.check_paging(status, envelope, new_next)
    except errors.UnsafeLocationError:
        raise
    except errors.ResponseFormatError as exc:
        problem = str(exc.args[0]) if exc.args else "history body does not have the documented shape"
        block = errors.MalformedBlockError(
            f"history block body is unreadable: {problem}",
            body=body,
            problem=problem,
            next_token=new_next,
            request_next=request_next,
            status=status,
            operation=operation,
        )
        # An answer cut short or replaced on the way is usually fine on the next
        # try; its Location is not trusted (or followed) until its body is.
        raise errors.UnreadableAnswerError(
            f"history answer is unreadable: {problem}",
            block=block,
            paging_error=paging_error,
            status=status,
            operation=operation,
        ) from exc
    if envelope.unknown:
        _report_unknown(envelope.unknown, observer)
    return models.HistoryPage(
        account_name=account_name,
        # Read into SMSMessage objects only when someone asks; the write path reads the records.
        messages=models.Messages(envelope.messages),
        has_more_data=envelope.has_more_data,
        status=status,
        next=new_next,
        request_next=request_next,
        body=body,
        ticket=gate.Ticket(new_next, len(envelope.messages)),
    )


def _report_unknown(names: tuple[str, ...], observer: Observer | None) -> None:
    count = getattr(observer, "on_unknown_member", None)
    for name in names:
        label = gate.unknown_member_label(name)
        if count is not None:
            count(label)


def _identity(response: requests.Response) -> requests.Response:
    return response


# --- helpers other modules and tests use -------------------------------------


def error_from_response(
    response: requests.Response, operation: str, *, cursor_sent: bool = False
) -> errors.ApiError:
    """Map a non-2xx response to the error hierarchy (matching codes, never messages)."""
    status = response.status_code
    code, message = _error_fields(response)
    # An HTTP-date is measured against the server's own Date, not our clock: a skewed
    # local clock would otherwise turn "in 30 s" into no wait or into hours.
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now=_server_date(response))
    fields: dict[str, Any] = {
        "status": status,
        "error_code": code,
        "error_message": message,
        "operation": operation,
    }
    if status == 429:
        return errors.RateLimitedError("rate limited", retry_after=retry_after, **fields)
    if status == 408 or status >= 500:
        return errors.ApiTransientError("server error", retry_after=retry_after, **fields)
    if status == 401 or (status == 400 and code is not None and code.endswith(_SESSION_EXPIRED_SUFFIX)):
        return errors.AuthError("credentials rejected", **fields)
    if 400 <= status < 500:
        if cursor_sent and status != 403:
            return errors.InvalidCursorError("the next token was rejected", **fields)
        return errors.ApiPermanentError("request rejected", **fields)
    return errors.ResponseFormatError("unexpected status", **fields)


def is_session_expired(error: errors.ApiError) -> bool:
    return (
        error.status == 400
        and error.error_code is not None
        and error.error_code.endswith(_SESSION_EXPIRED_SUFFIX)
    )


def strip_service_prefix(code: str) -> str:
    """``UnifiedWebService.REQUEST_FAILED.X`` -> ``REQUEST_FAILED.X``; unprefixed codes unchanged."""
    head, dot, rest = code.partition(".")
    category = rest.partition(".")[0]
    if dot and not _UPPER_CATEGORY_RE.fullmatch(head) and _UPPER_CATEGORY_RE.fullmatch(category):
        return rest
    return code


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or HTTP-date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            return None
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    current = now if now is not None else datetime.datetime.now(datetime.UTC)
    return max((when - current).total_seconds(), 0.0)


def _server_date(response: requests.Response) -> datetime.datetime | None:
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def valid_token(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH and _TOKEN_RE.fullmatch(token) is not None


def next_token_from_location(location: str, base_url: str) -> str:
    """The ``next`` query value of a history ``Location``; the rest of it is never used."""
    if _UNSAFE_LOCATION_RE.search(location) is not None:
        raise errors.UnsafeLocationError("Location contains whitespace or control characters")
    try:
        target = urllib.parse.urlsplit(location)
        base = _split_base(base_url)
        foreign = (
            target.scheme.lower() != base.scheme.lower()
            or (target.hostname or "") != (base.hostname or "")
            or _port(target) != _port(base)
            or target.username is not None
            or target.password is not None
        )
        if (target.scheme or target.netloc) and foreign:
            raise errors.UnsafeLocationError("Location points at another scheme, host or port")
    except ValueError as exc:
        raise errors.UnsafeLocationError("Location is not a valid URL") from exc
    values = urllib.parse.parse_qs(target.query, keep_blank_values=True).get("next", [])
    if len(values) != 1:
        raise errors.UnsafeLocationError(
            "Location has no next token" if not values else "Location has more than one next token"
        )
    token = values[0]
    if not valid_token(token):
        raise errors.UnsafeLocationError(
            f"Location next token {_preview(token)} is not 1-{MAX_TOKEN_LENGTH} letters or digits"
        )
    return token


# --- private -----------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _split_base(base_url: str) -> urllib.parse.SplitResult:
    # The base URL is the same for every block a client pages through.
    return urllib.parse.urlsplit(base_url)


def _environment_once(session: requests.Session, base_url: str) -> None:
    """Read what requests takes from the environment once, not at every request.

    requests looks up the proxy variables (``HTTPS_PROXY``, ``NO_PROXY``...), the CA bundle
    variables (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) and ``~/.netrc`` on every call: a
    third of the client's CPU per history block. Every request goes to the base URL's host,
    so its proxies and bundle are settled here, with requests' own rules. ``~/.netrc`` is not
    read at all: its credentials would replace the bearer in ``Authorization``.
    """
    session.proxies = dict(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


def _checked_base_url(cfg: ClientConfig) -> str:
    base = urls.check_base_url(
        cfg.base_url, allow_insecure_loopback=cfg.allow_insecure_loopback, name="base_url"
    )
    if base.startswith("http://"):
        _log.warning("thingspace_insecure_loopback", base_url=base)
    return base


def _check_credentials(cfg: ClientConfig) -> None:
    if not isinstance(cfg.client_secret, secret.Secret) or not isinstance(cfg.password, secret.Secret):
        raise errors.ConfigError("client_secret and password must be secret.Secret values")
    if not cfg.client_id or not cfg.username:
        raise errors.ConfigError("client_id and username are required")


def _port(parts: urllib.parse.SplitResult) -> int | None:
    return parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme.lower())


def _quote(account_name: str) -> str:
    return urllib.parse.quote(account_name, safe="")


def _check_account(account_name: str) -> None:
    if not isinstance(account_name, str) or not models.ACCOUNT_NAME_RE.fullmatch(account_name):
        raise errors.ValidationError(
            f"account name {_preview(str(account_name))} must be 3-32 letters, digits or '-'"
        )


def _preview(value: str) -> str:
    return repr(value if len(value) <= 24 else value[:24] + "...") + f" (length {len(value)})"


def _json(response: requests.Response, operation: str) -> Any:
    # The stdlib decoder, not response.json(): requests switches to simplejson when it
    # is installed, which refuses NaN and would make one odd message block its queue.
    # RecursionError is how a deeply nested body ends the decoder.
    cap = body_over_cap(response)
    if cap is not None:
        # Only the first bytes were kept: whatever they parse as, it is not the answer.
        raise errors.ResponseFormatError(
            f"response body is larger than {cap} bytes", status=response.status_code, operation=operation
        )
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:
        raise errors.ResponseFormatError(
            "response body is not JSON", status=response.status_code, operation=operation
        ) from exc


def _json_object(response: requests.Response, operation: str) -> dict[str, Any]:
    body = _json(response, operation)
    if not isinstance(body, dict):
        raise errors.ResponseFormatError(
            "response body is not a JSON object", status=response.status_code, operation=operation
        )
    return body


def _parse(response: requests.Response, operation: str, parser: Callable[[Any], T]) -> T:
    body = _json(response, operation)
    try:
        return parser(body)
    except errors.ResponseFormatError as exc:
        raise errors.ResponseFormatError(str(exc), status=response.status_code, operation=operation) from None


def _error_fields(response: requests.Response) -> tuple[str | None, str | None]:
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return None, None  # an HTML error page: the status says enough
    if not isinstance(body, dict):
        return None, None
    if isinstance(body.get("errorCode"), str):
        message = body.get("errorMessage")
        return strip_service_prefix(body["errorCode"]), message if isinstance(message, str) else None
    fault = body.get("fault")
    if isinstance(fault, dict):
        code = fault.get("code")
        message = fault.get("message")
        return (
            str(code) if isinstance(code, (int, str)) and not isinstance(code, bool) else None,
            message if isinstance(message, str) else None,
        )
    if isinstance(body.get("error"), str):
        description = body.get("error_description")
        return body["error"], description if isinstance(description, str) else None
    return None, None


# --- network errors ------------------------------------------------------------


def _host_port(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.hostname}:{port}" if port else str(parts.hostname)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts, and urllib3's ``reason``/``args``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in linked if isinstance(e, BaseException))


# Most specific first: a TLS failure is also an OSError, a DNS failure too.
_CAUSES: Final[tuple[tuple[type[BaseException], Callable[[Any], str]], ...]] = (
    (socket.gaierror, lambda e: f"DNS lookup failed ({e.strerror or e})"),
    (ssl.SSLCertVerificationError, lambda e: f"TLS certificate verification failed ({e.verify_message})"),
    (ssl.SSLError, lambda e: f"TLS handshake failed ({e.reason or type(e).__name__})"),
    (
        ConnectionRefusedError,
        lambda _: "connection refused (nothing listens there, or a firewall rejects it)",
    ),
    (ConnectionResetError, lambda _: "connection reset by the peer"),
    (TimeoutError, lambda _: "timed out"),
)


def network_cause(exc: BaseException) -> str:
    """What went wrong below HTTP, in words an operator can act on: DNS, refused, TLS, reset..."""
    chain = list(_chain(exc))
    for kind, describe in _CAUSES:
        for e in chain:
            if isinstance(e, kind):
                return describe(e)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off (ChunkedEncodingError)"
    if any(type(e).__name__ == "RemoteDisconnected" for e in chain):
        return "the server closed the connection without an answer"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
    return type(exc).__name__


# --- the total deadline of one exchange ------------------------------------------
#
# requests' read timeout bounds each socket read, so an answer trickling in a byte at a time
# never times out: the deadline of an exchange is kept by cutting its connection instead. The
# exchange registers with one watchdog thread; the connection it uses attaches its socket (our
# adapter's connections do so as they connect and as each request is sent, headers phase
# included; a caller's adapter only once the headers are in). At the deadline the watchdog shuts
# the socket down, which ends whatever read waits on it at once (TLS or not), and the exchange
# raises a timeout. A cut connection is closed, never handed back to the pool half-read.


class _Exchange:
    """One exchange's deadline (``time.monotonic``) and what the watchdog knows of it."""

    __slots__ = ("cut", "deadline", "owned", "sock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.cut = False
        self.sock: socket.socket | None = None
        # A duplicate of a new connection's socket, closed when the exchange ends: TLS takes
        # the original over (detaching it) while the handshake, which must be cuttable, runs.
        self.owned: socket.socket | None = None


class _Watchdog:
    """One thread for the process, started by the first exchange, asleep until the earliest deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live: set[_Exchange] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange) -> None:
        with self._cond:
            self._live.add(exchange)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="thingspace-deadlines", daemon=True)
                self._thread.start()
            elif exchange.deadline < self._wake_at:
                self._cond.notify()

    def attach(self, exchange: _Exchange, sock: object, *, owned: bool = False) -> None:
        """The socket to shut down at ``exchange``'s deadline (at once if it passed already)."""
        if not isinstance(sock, socket.socket):
            return
        with self._cond:
            if owned:
                if exchange.owned is not None:
                    exchange.owned.close()
                exchange.owned = sock
            if exchange.sock is None or owned:
                exchange.sock = sock
            if exchange.cut:
                _shut_down(sock)

    def unwatch(self, exchange: _Exchange) -> bool:
        """Forget ``exchange``; True when its deadline passed (its connection was cut)."""
        with self._cond:
            self._live.discard(exchange)
            owned, exchange.owned, exchange.sock = exchange.owned, None, None
            cut = exchange.cut
        if owned is not None:
            owned.close()
        return cut

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wake_at = math.inf
                for exchange in self._live:
                    if exchange.cut:
                        continue
                    if exchange.deadline <= now:
                        exchange.cut = True
                        if exchange.sock is not None:
                            _shut_down(exchange.sock)
                    else:
                        wake_at = min(wake_at, exchange.deadline)
                self._wake_at = wake_at
                self._cond.wait(None if wake_at == math.inf else wake_at - now)


_WATCHDOG: Final = _Watchdog()
# The exchange the current thread is sending, for the connection classes below.
_current = threading.local()


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own method even for an SSLSocket: only the file descriptor is touched,
    # never the TLS state the reading thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _attach_current(sock: object, *, new: bool) -> None:
    exchange: _Exchange | None = getattr(_current, "exchange", None)
    if exchange is None or not isinstance(sock, socket.socket):
        return
    if new:
        _WATCHDOG.attach(exchange, sock.dup(), owned=True)
    else:
        _WATCHDOG.attach(exchange, sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _attach_current(sock, new=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock, new=False)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _attach_current(sock, new=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock, new=False)
        super().request(*args, **kwargs)


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Final[dict[str, type[urllib3.connectionpool.HTTPConnectionPool]]] = {
    "http": _WatchedHTTPConnectionPool,
    "https": _WatchedHTTPSConnectionPool,
}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections the watchdog can cut from the first byte on."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.poolmanager.ProxyManager:
        manager: urllib3.poolmanager.ProxyManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def _socket_of(response: requests.Response) -> object:
    connection = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


_READ_CHUNK: Final = 64 * 1024
_OVER_CAP: Final = "thingspace_body_over_cap"


def _read_body(response: requests.Response, cap: int) -> None:
    """Read the whole body now (requests' own errors for a cut or undecodable one), at most ``cap`` bytes.

    A longer body is not read further: its connection is closed, the first ``cap`` bytes are
    kept and ``body_over_cap`` says so (every body decoded through ``_json`` is then unreadable).
    """
    if response.raw is None:  # an adapter that built the response with its content
        content = response.content or b""
        if len(content) > cap:
            response._content = content[:cap]
            vars(response)[_OVER_CAP] = cap
        return
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_READ_CHUNK):
        if size + len(chunk) > cap:
            chunks.append(chunk[: cap - size])
            _discard(response)
            vars(response)[_OVER_CAP] = cap
            break
        chunks.append(chunk)
        size += len(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]


def body_over_cap(response: requests.Response) -> int | None:
    """The size cap ``response``'s body went over (only its first bytes were kept); None if within it."""
    cap = vars(response).get(_OVER_CAP)
    return cap if isinstance(cap, int) else None


def _discard(response: requests.Response) -> None:
    """Close ``response`` and its connection, unread: the pool gets the connection back closed."""
    with contextlib.suppress(Exception):
        if response.raw is not None:
            response.raw.close()
        response.close()


def _deadline_error(operation: str, url: str, seconds: float, limit: str) -> errors.ApiTransientError:
    return errors.ApiTransientError(
        f"request to {_host_port(url)} timed out: no complete answer within {seconds:.3g} s ({limit})",
        operation=operation,
    )


def _request_error(
    exc: requests.RequestException, operation: str, url: str, *, cut: bool, seconds: float, limit: str
) -> errors.ApiError:
    """requests' exception as ours: the deadline when it was cut, else as before."""
    if cut:
        return _deadline_error(operation, url, seconds, limit)
    if isinstance(exc, requests.Timeout):
        return errors.ApiTransientError(
            f"request to {_host_port(url)} timed out ({type(exc).__name__})", operation=operation
        )
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return errors.ApiTransientError(
            f"connection to {_host_port(url)} failed: {network_cause(exc)}", operation=operation
        )
    return errors.ApiPermanentError(f"request could not be made ({type(exc).__name__})", operation=operation)
