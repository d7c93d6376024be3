"""HTTP client for the ThingSpace SMS API, with the vendor SDK's operation names.

``ThingSpaceClient(cfg).sms`` offers ``send_sms_to_device``,
``list_devices_sms_messages``, ``start_queued_sms_delivery`` and
``iter_history_blocks``; ``.callbacks`` offers ``list_registered_callbacks``,
``register_callback`` and ``deregister_callback`` (both in ``controllers``). This
module keeps the tokens, the guarded login and the authenticated call with its
retries; one HTTP exchange is ``transport``'s, what an answer says is ``answers``',
and which history answer is the block, and which token may be sent next, is
``paging``'s. Decisions worth knowing:

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
* An API call is cut at the run's ``deadline`` (and not sent past it); a token
  request or a login never is (a login cut short would be an unknown outcome the
  guard counts). An expired session or a rejected bearer is renewed once per attempt.
* A transient error from reading a 2xx answer (``errors.UnreadableAnswerError``)
  re-sends the *same* request like a 503 would; ``call_and_read`` counts the attempts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

import requests
import structlog

from sync_worker import answers, auth, controllers, errors, retry, secret, transport, urls

DEFAULT_TOTAL_TIMEOUT: Final = 120.0
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024

_log = structlog.get_logger(__name__)
T = TypeVar("T")


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
    observer: transport.Observer | None = dataclasses.field(default=None, repr=False, compare=False)
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
        self._transport = transport.Transport(
            self._base,
            session=cfg.session,
            pool_size=cfg.pool_size,
            timeout=cfg.timeout,
            total_timeout=cfg.total_timeout,
            max_body_bytes=cfg.max_body_bytes,
            clock=cfg.retry.clock,
            observer=cfg.observer,
        )
        self._bearer = auth.BearerTokenCache(
            self._fetch_bearer, margin=cfg.token_expiry_margin, clock=cfg.clock
        )
        self._guard: auth.LoginGuard = (
            cfg.login_guard if cfg.login_guard is not None else auth.MemoryLoginGuard()
        )
        self._session = auth.SessionTokenCache(self._log_in)
        self.sms = controllers.SmsController(self)
        self.callbacks = controllers.ConnectivityCallbacksController(self)

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def observer(self) -> transport.Observer | None:
        return self._cfg.observer

    @property
    def allow_insecure_loopback(self) -> bool:
        return self._cfg.allow_insecure_loopback

    def close(self) -> None:
        self._transport.close()

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

    # --- credentials ---------------------------------------------------------

    def _credentials(self) -> auth.Credentials:
        if self._cfg.credentials is not None:
            return self._cfg.credentials()
        cfg = self._cfg
        return auth.Credentials(cfg.client_id, cfg.client_secret, cfg.username, cfg.password)

    def _fetch_bearer(self) -> tuple[str, float]:
        operation = "oauth_token"
        creds = self._credentials()
        response = self._transport.exchange(
            operation,
            "POST",
            f"{self._base}/ts/v1/oauth2/token",
            {},
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret.reveal()),
        )
        if not 200 <= response.status_code < 300:
            raise answers.error_from_response(response, operation)
        body = answers.json_object(response, operation)
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
            response = self._transport.exchange(
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
                    retry_after=answers.parse_retry_after(
                        response.headers.get("Retry-After"), now=answers.server_date(response)
                    ),
                    operation=operation,
                )
            if 400 <= status < 500:
                if status == 401:
                    # Whatever refused it, the next login should not reuse this bearer.
                    self._bearer.invalidate(bearer)
                found = answers.error_from_response(response, operation)
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
                raise answers.error_from_response(response, operation)
            token = answers.json_object(response, operation).get("sessionToken")
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
                        f"request to {transport.host_port(url)} not sent: the run budget has ended",
                        operation=operation,
                    )
                bearer = self._bearer.get()
                session_token = self._session.get(deadline)
                response = self._transport.exchange(
                    operation,
                    method,
                    url,
                    {"Authorization": f"Bearer {bearer}", "VZ-M2M-Token": session_token},
                    json_body=json_body,
                    run_deadline=deadline,
                )
                if 200 <= response.status_code < 300:
                    return read(response)
                error = answers.error_from_response(response, operation, cursor_sent=cursor_sent)
                if answers.is_session_expired(error) and not session_replayed:
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


def _identity(response: requests.Response) -> requests.Response:
    return response


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
