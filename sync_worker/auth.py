"""The two credentials every ThingSpace call carries, cached.

* ``BearerTokenCache``: the OAuth access token, kept until ``expires_in`` minus a
  margin, dropped early when the gateway answers 401; the platform's same-token-for-an-hour
  rule cannot make it loop, and token requests are bounded per window.
* ``SessionTokenCache``: the M2M session token (``VZ-M2M-Token``). There is no
  refresh endpoint and the platform says when a session expired, so it is kept
  until a caller reports that.

Both take the function that does the HTTP work from the client, so this module
only decides *when* to fetch. Both hold a lock while fetching: a client is shared
by the daemon's account threads and only one of them should log in.

Whether a login may be attempted at all is the login guard's decision
(``guard``), made around every login from the count it keeps: nothing here
remembers a refusal, so no process holds a "refused" state that the guard's
record does not show.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Final, Literal, Protocol

import structlog

from sync_worker import errors, secret

_log = structlog.get_logger(__name__)

Outcome = Literal["succeeded", "refused", "unknown", "throttled"]
# ThingSpace locks a user after this many failed session logins in a row.
VENDOR_LOCKOUT_AT: Final = 5
# The most failed logins in a row the guard ever lets exist: one more is the vendor's lock-out.
CEILING: Final = VENDOR_LOCKOUT_AT - 1
# Token requests allowed per window (``BearerTokenCache``): a renewal and one more after a 401
# leave room for normal use; a platform that keeps handing back a token its gateway refuses
# gets no more than that.
TOKEN_REQUESTS_PER_WINDOW: Final = 2
TOKEN_REQUEST_WINDOW: Final = 30.0
# ``expires_in`` is whole seconds: a token handed back near its end is used until a second past
# the expiry it announced, so the next request lands after the platform's hour.
_EXPIRY_ROUNDING: Final = 1.0
_FINGERPRINT_SALT: Final = b"thingspace-sms-sync/login-guard/v1"
# Slow on purpose: the fingerprint is stored in the database, and a cheap hash of
# a password is a cheap dictionary attack away from the password.
_FINGERPRINT_ITERATIONS: Final = 200_000


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a token request and a session login send."""

    client_id: str
    client_secret: secret.Secret
    username: str
    password: secret.Secret

    def fingerprint(self, base_url: str) -> str:
        """A slow salted hash of the login material: equal only for equal credentials."""
        return _fingerprint(
            base_url, self.client_id, self.username, self.password.reveal(), self.client_secret.reveal()
        )


# Fingerprints already computed (at most _FINGERPRINTS_KEPT, oldest dropped first), and the lock
# that makes a caller wait for a computation in progress instead of starting a second one: a
# pass computes its fingerprint ahead, while it starts up, and the login then waits for that.
_FINGERPRINTS_KEPT: Final = 8
_fingerprints: dict[tuple[str, ...], str] = {}
_fingerprints_lock = threading.Lock()


def _fingerprint(*parts: str) -> str:
    with _fingerprints_lock:
        found = _fingerprints.get(parts)
        if found is None:
            # JSON keeps the parts unambiguous ("ab"+"c" differs from "a"+"bc").
            material = json.dumps(list(parts), ensure_ascii=False).encode("utf-8")
            digest = hashlib.pbkdf2_hmac("sha256", material, _FINGERPRINT_SALT, _FINGERPRINT_ITERATIONS)
            found = digest.hex()
            if len(_fingerprints) >= _FINGERPRINTS_KEPT:
                del _fingerprints[next(iter(_fingerprints))]
            _fingerprints[parts] = found
        return found


def user_key(username: str) -> str:
    """The user as the vendor counts failed logins: the login guard's key.

    Case-folded: if the vendor tells ``Ops`` from ``ops`` apart, counting them as one
    user only stops the guard early; if it does not, two counts would let the user be
    locked. No base URL either: the same user reached through two spellings of the
    platform's address is one count at the vendor.
    """
    return username.casefold()


def check_threshold(threshold: int) -> int:
    if not 1 <= threshold <= CEILING:
        raise errors.ConfigError(
            f"login guard threshold must be 1..{CEILING} "
            f"(the vendor locks the user at {VENDOR_LOCKOUT_AT}), got {threshold}"
        )
    return threshold


def refusal(failures: int, failed: frozenset[str], fingerprint: str, threshold: int) -> str | None:
    """Why a login with ``fingerprint`` must not be attempted now, or None when it may."""
    if failures >= CEILING:
        return (
            f"{failures} failed logins in a row are presumed at ThingSpace, which locks the user at "
            f"{VENDOR_LOCKOUT_AT}: no login is attempted, whatever the credentials"
        )
    if failures >= threshold and fingerprint in failed:
        return (
            f"{failures} failed logins in a row are presumed at ThingSpace (threshold {threshold}) and "
            "these credentials are among them: not retried until they change"
        )
    return None


def tripped_error(reason: str, username: str) -> errors.LoginGuardTrippedError:
    return errors.LoginGuardTrippedError(
        f"not logging in as {username!r}: {reason}. Fix the credentials; once the vendor's count is "
        "known to be zero again, run `sync-worker auth reset` (README: login guard)"
    )


class LoginGuard(Protocol):
    """Decides whether a session login may be attempted and records what came of it.

    ``begin`` counts the attempt (raising ``errors.LoginGuardTrippedError`` to
    refuse it) and returns its id; ``finish`` is then called exactly once.
    """

    def begin(self, fingerprint: str, *, deadline: float | None = None) -> str: ...

    def finish(
        self,
        attempt: str,
        fingerprint: str,
        outcome: Outcome,
        error: BaseException | None = None,
    ) -> None: ...


class BearerTokenCache:
    """OAuth client-credentials token. ``fetch`` returns ``(access_token, expires_in)``.

    ThingSpace answers every token request during a token's hour with that *same* token, its
    ``expires_in`` counting down from the first issue (to this process or any other using the
    client id). Asking again shortly before expiry gets the nearly expired token back, not a fresh
    one. So:

    * a token is renewed ``margin`` seconds before it expires, unless that time has already come
      when it arrives (a token another process got first, or a renewal that brought the held
      token back): then it is used until it expires (plus a second: ``expires_in`` is whole
      seconds) or is rejected, and the endpoint is not asked again meanwhile;
    * a 401 drops the token (``invalidate``) and the next ``get`` asks for one;
    * at most ``max_requests`` token requests per ``window`` seconds. Past that, ``get`` keeps
      using the token it holds, or raises ``errors.ApiTransientError`` (operation
      ``oauth_token``, with ``retry_after``) when it holds none: a token the gateway refuses
      while the token endpoint keeps handing it back costs a bounded number of requests.
    """

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        *,
        margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        window: float = TOKEN_REQUEST_WINDOW,
        max_requests: int = TOKEN_REQUESTS_PER_WINDOW,
    ) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._window = window
        self._lock = threading.Lock()
        self._token: secret.Secret | None = None
        self._renew_at = 0.0
        # The token a 401 came back for: handed back by the next request, it is no fresh token.
        self._rejected: secret.Secret | None = None
        self._requests: collections.deque[float] = collections.deque(maxlen=max(1, max_requests))

    def get(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._renew_at:
                return self._token.reveal()
            wait = self._wait(now)
            if wait > 0:
                if self._token is not None:
                    return self._token.reveal()
                raise errors.ApiTransientError(
                    f"not asking for an OAuth token again yet: {len(self._requests)} token requests in the "
                    f"last {self._window:g} s, and the platform refused the token they brought",
                    operation="oauth_token",
                    retry_after=wait,
                )
            self._requests.append(now)
            token, expires_in = self._fetch()
            # The token it replaces (or the refused one handed back) leaves the scrub registry.
            secret.replace(self._token if self._token is not None else self._rejected, token)
            # Measured once the answer is in: the countdown was read at the server before that,
            # so the token cannot outlive this estimate by more than the rounding.
            now = self._clock()
            same = any(t is not None and t.reveal() == token for t in (self._token, self._rejected))
            expires_at = now + max(expires_in, 0.0)
            if same or expires_in <= self._margin:
                # Asking again before it expires would only bring this token back.
                self._renew_at = expires_at + _EXPIRY_ROUNDING
                if same:
                    _log.info("thingspace_bearer_unchanged", expires_in=expires_in)
            else:
                self._renew_at = expires_at - self._margin
            self._token = secret.Secret(token)
            self._rejected = None
            return token

    def invalidate(self, stale: str) -> None:
        """Forget ``stale`` (the token a 401 came back for) unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.reveal() == stale:
                secret.unregister(self._token)
                self._rejected, self._token = self._token, None

    def _wait(self, now: float) -> float:
        """Seconds until another token request is allowed (0: now)."""
        if len(self._requests) < (self._requests.maxlen or 1):
            return 0.0
        return max(self._requests[0] + self._window - now, 0.0)

    def __repr__(self) -> str:
        return f"BearerTokenCache(cached={self._token is not None})"


class SessionTokenCache:
    """M2M session token. ``login(deadline)`` performs one (guarded) login and returns the
    ``sessionToken``; whatever it raises reaches the caller unchanged."""

    def __init__(self, login: Callable[[float | None], str]) -> None:
        self._login = login
        self._lock = threading.Lock()
        self._token: secret.Secret | None = None

    def get(self, deadline: float | None = None) -> str:
        with self._lock:
            if self._token is None:
                token = self._login(deadline)
                secret.register(token)
                self._token = secret.Secret(token)
                _log.info("thingspace_session_started")
            return self._token.reveal()

    def invalidate(self, stale: str) -> None:
        """Forget ``stale`` (the token the platform called expired) unless already replaced."""
        with self._lock:
            if self._token is not None and self._token.reveal() == stale:
                secret.unregister(self._token)
                self._token = None

    def __repr__(self) -> str:
        return f"SessionTokenCache(cached={self._token is not None})"


class MemoryLoginGuard:
    """The same rules inside one process: the default of a client built without a database.

    The default threshold of 1 stops after the first failure: a library caller
    has no operator watching a count, and nothing outside this process would
    remember a second one.
    """

    def __init__(self, *, threshold: int = 1) -> None:
        self._threshold = check_threshold(threshold)
        self._lock = threading.Lock()
        self._failures = 0
        self._failed: set[str] = set()
        self._pending: str | None = None

    @property
    def threshold(self) -> int:
        return self._threshold

    @property
    def failures(self) -> int:
        """The failed logins in a row this guard presumes at the vendor."""
        with self._lock:
            return self._failures

    def begin(self, fingerprint: str, *, deadline: float | None = None) -> str:
        with self._lock:
            reason = refusal(self._failures, frozenset(self._failed), fingerprint, self._threshold)
            if reason is not None:
                raise tripped_error(reason, "this client's user")
            self._failures += 1
            self._pending = str(uuid.uuid4())
            return self._pending

    def finish(
        self, attempt: str, fingerprint: str, outcome: Outcome, error: BaseException | None = None
    ) -> None:
        with self._lock:
            ours = attempt == self._pending
            self._pending = None if ours else self._pending
            if outcome == "succeeded":
                self._failures, self._failed = 0, set()
            elif outcome == "throttled":
                if ours:
                    self._failures = max(self._failures - 1, 0)
            else:
                self._failed.add(fingerprint)
