"""The two credentials every ThingSpace call carries, cached.

* ``BearerTokenCache``: the OAuth access token, kept until ``expires_in`` minus a
  margin, dropped early when the gateway answers 401.
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

    def get(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._valid_until:
                token, expires_in = self._fetch()
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
