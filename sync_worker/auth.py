"""The two credentials every ThingSpace call carries, cached.

* ``BearerTokenCache``: the OAuth access token, kept until ``expires_in`` minus a
  margin, dropped early when the gateway answers 401.
* ``SessionTokenCache``: the M2M session token (``VZ-M2M-Token``). There is no
  refresh endpoint and the platform says when a session expired, so it is kept
  until a caller reports that.

Both take the function that does the HTTP work from the client, so this module
only decides *when* to fetch. Both hold a lock while fetching: a client is shared
by the daemon's account threads and only one of them should log in.

A refused login is remembered: five failed logins in a row lock the ThingSpace
user until vendor support unlocks it, so this cache never tries the same
credentials again (a new client, i.e. a restart with fixed settings, does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from sync_worker import errors, secret

_log = structlog.get_logger(__name__)


class LoginGuard(Protocol):
    """Persistent bookkeeping of failed logins, consulted around every session login."""

    def before_login(self) -> None: ...  # raise errors.LoginGuardTrippedError to refuse

    def login_succeeded(self) -> None: ...

    def login_failed(self, error: errors.LoginFailedError) -> None: ...


class BearerTokenCache:
    """OAuth client-credentials token. ``fetch`` returns ``(access_token, expires_in)``."""

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        *,
        margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: secret.Secret | None = None
        self._valid_until = 0.0
        self.fetches = 0

    def get(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._valid_until:
                token, expires_in = self._fetch()
                self.fetches += 1
                secret.register(token)
                # A lifetime shorter than the margin would mean a fetch per call;
                # using half of it still renews well before expiry.
                lifetime = expires_in - self._margin if expires_in > self._margin * 2 else expires_in / 2
                self._token = secret.Secret(token)
                self._valid_until = now + max(lifetime, 0.0)
            return self._token.reveal()

    def invalidate(self, stale: str) -> None:
        """Forget ``stale`` (the token a 401 came back for) unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.reveal() == stale:
                self._token = None

    def __repr__(self) -> str:
        return f"BearerTokenCache(cached={self._token is not None})"


class SessionTokenCache:
    """M2M session token. ``login`` performs one login and returns the ``sessionToken``;
    it raises ``errors.LoginFailedError`` when the platform refused the credentials."""

    def __init__(self, login: Callable[[], str], *, guard: LoginGuard | None = None) -> None:
        self._login = login
        self._guard = guard
        self._lock = threading.Lock()
        self._token: secret.Secret | None = None
        self._refused: errors.LoginFailedError | None = None
        self.logins = 0

    def get(self) -> str:
        with self._lock:
            if self._refused is not None:
                raise _still_refused(self._refused)
            if self._token is None:
                self._token = secret.Secret(self._log_in())
            return self._token.reveal()

    def invalidate(self, stale: str) -> None:
        """Forget ``stale`` (the token the platform called expired) unless already replaced."""
        with self._lock:
            if self._token is not None and self._token.reveal() == stale:
                self._token = None

    def _log_in(self) -> str:
        if self._guard is not None:
            self._guard.before_login()
        self.logins += 1
        try:
            token = self._login()
        except errors.LoginFailedError as exc:
            self._refused = exc
            _log.error("thingspace_login_refused", status=exc.status, error_code=exc.error_code)
            if self._guard is not None:
                self._guard.login_failed(exc)
            raise
        secret.register(token)
        if self._guard is not None:
            self._guard.login_succeeded()
        _log.info("thingspace_session_started")
        return token

    def __repr__(self) -> str:
        return f"SessionTokenCache(cached={self._token is not None}, refused={self._refused is not None})"


def _still_refused(first: errors.LoginFailedError) -> errors.LoginFailedError:
    # A fresh exception each time: re-raising the stored one would grow its traceback.
    return errors.LoginFailedError(
        "an earlier session login with these credentials was refused; not logging in again "
        "(five failed logins in a row lock the ThingSpace user): fix the credentials and restart",
        status=first.status,
        error_code=first.error_code,
        error_message=first.error_message,
        operation=first.operation,
    )
