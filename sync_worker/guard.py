"""The login lock-out guard, kept in Postgres.

ThingSpace locks a user after five failed session logins in a row, and only
vendor support can unlock it. A single process cannot protect against that: a
crash-looping daemon, a cron job, or several replicas would each start counting
from zero. So the count of consecutive failures lives in the database, keyed by
the principal (the ThingSpace user) and a fingerprint of the credentials, and
every login attempt in every process consults it first.

``LoginGuard`` implements the ``auth.LoginGuard`` protocol on top of the
``store.login_guard_*`` functions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final

import psycopg
import psycopg.errors
import structlog

from sync_worker import config, errors, store

ConnectionFactory = config.ConnectionFactory

_log = structlog.get_logger(__name__)
# pg_advisory_lock(int, int) namespace of the login lock ("SMSG"); account locks use another.
_GUARD_LOCK_NAMESPACE: Final = 0x53_4D_53_47
_LOCK_PREFIX: Final = "login-guard:"


def _factory(dsn_or_factory: str | ConnectionFactory) -> ConnectionFactory:
    if callable(dsn_or_factory):
        return dsn_or_factory
    return config.connection_factory(
        dsn_or_factory, application_name="sync-worker-guard", failure="login guard cannot reach the database"
    )


class LoginGuard:
    """Refuses session logins once ``threshold`` consecutive failures are recorded.

    Check, login and verdict are serialised across every process sharing the
    database: ``before_login`` takes a session-level advisory lock on a
    connection of its own and keeps it until ``login_succeeded`` or
    ``login_failed`` records the verdict. Without that, replicas that all read
    "2 failures" at the same moment would each try once more and together reach
    the vendor's lock-out. A login that ends without a verdict (a network error)
    leaves the lock held until the next ``before_login`` of this guard or
    ``close()``; other processes wait at most ``lock_wait_seconds`` and then get
    an ``errors.TransientError`` (retry later), never a login.

    Give each client its own guard: the client serialises its logins, which
    is what lets one pending lock per guard suffice.

    A database that cannot be reached makes ``before_login`` fail closed: not
    knowing the count must not risk a vendor lock-out.
    """

    def __init__(
        self,
        dsn_or_connection_factory: str | ConnectionFactory,
        *,
        principal: str,
        fingerprint: str,
        threshold: int,
        lock_wait_seconds: float = 90.0,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        if not 1 <= threshold <= 4:
            # Five failures lock the user at the vendor; the guard must stop earlier.
            raise errors.ConfigError(
                f"login guard threshold must be 1..4 (the vendor locks at 5), got {threshold}"
            )
        self._connect = _factory(dsn_or_connection_factory)
        self._principal = principal
        self._fingerprint = fingerprint
        self._threshold = threshold
        self._lock_wait_ms = max(1, int(lock_wait_seconds * 1000))
        self._lock = threading.Lock()
        self._pending: psycopg.Connection[Any] | None = None
        # Told True/False whenever this guard learns whether it is tripped, so a
        # metric can go back to 0 after a good login or an operator's reset.
        self._on_state = on_state

    @property
    def threshold(self) -> int:
        return self._threshold

    def failures(self) -> int:
        """The consecutive failures recorded for these credentials."""
        with self._connect() as conn:
            return store.login_guard_state(conn, self._principal, self._fingerprint).failures

    def tripped(self) -> bool:
        return self.failures() >= self._threshold

    def observe(self) -> bool:
        """Read whether the guard is tripped now and report it to ``on_state``.

        The only way a process notices `sync-worker auth reset` (run elsewhere)
        without attempting a login.
        """
        tripped = self.tripped()
        self._report(tripped)
        return tripped

    def before_login(self) -> None:
        with self._lock:
            self._drop_pending()
            conn = self._connect()
            try:
                self._acquire(conn)
                state = store.login_guard_state(conn, self._principal, self._fingerprint)
            except BaseException:
                conn.close()
                raise
            if state.failures >= self._threshold:
                conn.close()
                self._report(True)
                _log.error(
                    "login_guard_tripped",
                    principal=self._principal,
                    failures=state.failures,
                    threshold=self._threshold,
                )
                raise errors.LoginGuardTrippedError(
                    f"{state.failures} consecutive failed logins recorded for {self._principal!r} "
                    f"(threshold {self._threshold}, vendor lock-out at 5): not logging in. "
                    "Fix the credentials or run `sync-worker auth reset`."
                )
            self._pending = conn

    def login_succeeded(self) -> None:
        with self._lock:
            with self._verdict_connection() as conn:
                store.record_login_success(conn, self._principal, self._fingerprint)
            self._drop_pending()
        self._report(False)

    def login_failed(self, error: errors.LoginFailedError) -> None:
        with self._lock:
            with self._verdict_connection() as conn:
                failures = store.record_login_failure(
                    conn, self._principal, self._fingerprint, str(error), threshold=self._threshold
                )
            self._drop_pending()
        self._report(failures >= self._threshold)
        _log.warning(
            "login_failed_recorded",
            principal=self._principal,
            failures=failures,
            threshold=self._threshold,
            tripped=failures >= self._threshold,
        )

    def close(self) -> None:
        """Release a login lock still held by a login that ended without a verdict."""
        with self._lock:
            self._drop_pending()

    def _report(self, tripped: bool) -> None:
        if self._on_state is not None:
            self._on_state(tripped)

    def _acquire(self, conn: psycopg.Connection[Any]) -> None:
        key = store.account_lock_key(_LOCK_PREFIX + self._principal)
        try:
            # The lock must be session-level and store functions refuse to
            # run inside an open transaction: autocommit gives both.
            conn.autocommit = True
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self._lock_wait_ms}ms",))
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (_GUARD_LOCK_NAMESPACE, key))
        except psycopg.errors.LockNotAvailable as exc:
            raise errors.TransientError(
                "another process's ThingSpace login is still pending; not logging in now"
            ) from exc
        except psycopg.Error as exc:
            raise errors.DatabaseUnavailableError(
                f"login guard cannot lock ({type(exc).__name__}); not logging in"
            ) from exc

    def _verdict_connection(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        if self._pending is not None and not self._pending.closed:
            # Recorded on the connection holding the lock, so no other process
            # can read the count between the login and its verdict.
            return contextlib.nullcontext(self._pending)
        return self._connect()

    def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            # Closing the session releases its advisory lock.
            with contextlib.suppress(psycopg.Error):
                pending.close()
