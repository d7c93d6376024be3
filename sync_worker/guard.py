"""The login lock-out guard: never let ThingSpace lock the user.

ThingSpace locks a user after five failed session logins in a row, counted per
user whatever credentials each attempt used, and only vendor support unlocks
it. The guard keeps the vendor's *presumed* count for each user, keyed by the
case-folded username alone (``auth.user_key``): whatever base URL spelling
reached the platform (``https://ThingSpace.verizon.com/api``, ``...:443/api``, a
trailing slash), and whatever the case of the name, it is one count, because
the vendor has one. It counts every refusal, and every login whose outcome is
unknown (no answer, a lost connection, a 5xx, an unreadable answer, a process
that died mid-login), since the last successful login seen by any process. The
rules (``refusal``):

* the ceiling: no login is attempted that could be the fifth failure in a row,
  whatever the credentials (``CEILING`` = 4 failures may exist, never 5);
* the soft stop: credentials that already failed since the last success are
  not tried again once ``threshold`` failures are recorded; new credentials may
  use the headroom left below the ceiling, and no more;
* only a successful login (or an operator's ``auth reset``: their statement
  that the vendor's count is zero again) sets the count to zero;
* a 429 or 408 is not a verdict on the credentials: it is neither counted nor
  remembered, and the caller backs off.

A login is counted *before* its request goes out (a reservation with a lease);
its verdict then keeps, clears or takes back that count. So a process that is
killed or loses its network mid-login leaves a failure behind, never a gap, and
its lease runs out after ``lease_seconds`` (``login_lease``). Only one login per user is in
flight at a time across every process sharing the database: the others wait
(bounded by the run's deadline, ``max_wait_seconds`` and the stop event), so
replicas cannot race past the ceiling together.

``LoginGuard`` keeps the count in Postgres (``sql/queries/login_guard.sql``);
the rules themselves live in ``auth`` (``auth.refusal``), where
``auth.MemoryLoginGuard`` applies them inside one process for a client used
as a library without a database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final

import structlog

from sync_worker import auth, config, db, errors, queries, secret

Outcome = auth.Outcome
ConnectionFactory = db.ConnectionFactory

CEILING: Final = auth.CEILING
# How often a login waiting for another process's login looks again.
_POLL_SECONDS: Final = 0.25
# Beyond the login's own HTTP exchange: a slow database while the verdict is recorded.
LEASE_MARGIN_SECONDS: Final = 30.0
_MAX_ERROR_TEXT: Final = 1000

_log = structlog.get_logger(__name__)


def login_lease(total_timeout: float) -> float:
    """How long a login's reservation holds the user's other logins off: a login exchange cannot take
    longer than its total timeout (THINGSPACE_TOTAL_TIMEOUT, connect, headers and body together), so a
    process that vanished mid-login holds no longer; the margin covers a slow database."""
    return total_timeout + LEASE_MARGIN_SECONDS


@dataclasses.dataclass(frozen=True, slots=True)
class GuardState:
    """One user's row, as read."""

    failures: int = 0
    failed_fingerprints: frozenset[str] = frozenset()
    last_outcome: str | None = None
    last_attempt_at: dt.datetime | None = None
    last_success_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    last_error: str | None = None
    tripped_at: dt.datetime | None = None
    pending_attempt: str | None = None
    pending_fingerprint: str | None = None
    pending_holder: str | None = None
    lease_left: float | None = None  # seconds; <= 0 once the pending login's lease ran out

    @property
    def pending_live(self) -> bool:
        return self.pending_attempt is not None and self.lease_left is not None and self.lease_left > 0


@dataclasses.dataclass(frozen=True, slots=True)
class GuardStatus:
    """What ``auth status``, ``/readyz`` and the metric say about one set of credentials."""

    state: GuardState
    threshold: int
    blocked: str | None  # why these credentials will not log in now
    ceiling: int = CEILING

    @property
    def refused(self) -> bool:
        """The last verdict on a login was a refusal and no success came since."""
        return self.state.last_outcome == "refused" and self.state.failures > 0

    @property
    def problem(self) -> str | None:
        """Why the worker cannot sync now, in one sentence; None while logins may work."""
        if self.blocked is not None:
            return f"login guard tripped: {self.blocked}"
        if self.refused:
            return (
                f"the last session login was refused ({self.state.failures} failed in a row; "
                f"the guard stops at {self.threshold} for the same credentials, {self.ceiling} for any)"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "failures": s.failures,
            "threshold": self.threshold,
            "ceiling": self.ceiling,
            "vendor_lockout_at": auth.VENDOR_LOCKOUT_AT,
            "tripped": self.blocked is not None,
            "refused": self.refused,
            "problem": self.problem,
            "last_outcome": s.last_outcome,
            "last_attempt_at": _iso(s.last_attempt_at),
            "last_success_at": _iso(s.last_success_at),
            "last_failure_at": _iso(s.last_failure_at),
            "last_error": s.last_error,
            "login_in_flight": s.pending_live,
            "login_in_flight_by": s.pending_holder if s.pending_live else None,
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    # Read by operators (`auth status`): never a credential, even one echoed back by the platform.
    text = secret.scrub(f"{type(error).__name__}: {error}")
    return text[:_MAX_ERROR_TEXT]


class LoginGuard:
    """The guard kept in Postgres, shared by every process that uses the same database.

    ``begin`` returns an attempt id once the login is counted; the caller must
    then report ``finish`` exactly once. A database that cannot be reached makes
    ``begin`` fail closed (``errors.DatabaseUnavailableError``): not knowing the
    count must not risk a lock-out. ``finish`` never raises: the count already
    holds the attempt as failed, which is the safe side if its verdict is lost.
    A verdict the database could not take (it restarted mid-login) is kept and
    recorded by this guard's next reading of the row (``begin``, ``state``), while
    the reservation is still the pending login: the lease is for a login whose
    outcome nobody knows, not for one this process knows and could not write down.
    """

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        username: str,
        threshold: int,
        lease_seconds: float | None = None,
        max_wait_seconds: float = 120.0,
        stop_event: threading.Event | None = None,
        on_state: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        # The row is the user as the vendor counts it: no base URL, case folded. ``spelling``
        # finds a row 0009 merged under another folding of the same name (guard_adopt_spelling).
        self._key = {"username": auth.user_key(username), "spelling": username}
        self._username = username
        self._threshold = auth.check_threshold(threshold)
        if lease_seconds is None:
            # The lease of a client left at the configured default timeouts.
            defaults = config.Settings
            lease_seconds = login_lease(defaults.http_total_timeout)
        self._lease_seconds = max(1.0, lease_seconds)
        self._max_wait = max_wait_seconds
        self._stop = stop_event if stop_event is not None else threading.Event()
        # Told whether syncing is blocked whenever this guard learns it, so a metric can
        # go back to 0 after a good login or an operator's reset.
        self._on_state = on_state
        self._clock = clock
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        # Verdicts ``finish`` could not record: attempt -> (fingerprint, outcome, error text).
        self._unrecorded: dict[str, tuple[str, Outcome, str | None]] = {}
        self._unrecorded_lock = threading.Lock()

    @property
    def threshold(self) -> int:
        return self._threshold

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    # --- reading ---------------------------------------------------------

    def state(self) -> GuardState:
        self._record_late()
        with self._transaction() as cur:
            self._adopt_spelling(cur)
            row = cur.execute(queries.get("guard_state"), self._key).fetchone()
        return _state(row)

    def status(self, fingerprint: str) -> GuardStatus:
        state = self.state()
        blocked = auth.refusal(state.failures, state.failed_fingerprints, fingerprint, self._threshold)
        return GuardStatus(state, self._threshold, blocked)

    def observe(self, fingerprint: str) -> GuardStatus:
        """Read the status and report it to ``on_state``: how a process notices a reset elsewhere."""
        status = self.status(fingerprint)
        self._report(status.problem is not None)
        return status

    def reset(self) -> GuardState:
        """Record the operator's statement that the vendor's count is zero again."""
        with self._transaction() as cur:
            self._adopt_spelling(cur)
            cur.execute(queries.get("guard_ensure_row"), self._key)
            cur.execute(queries.get("guard_reset"), self._key)
            row = cur.execute(queries.get("guard_state"), self._key).fetchone()
        _log.warning("login_guard_reset", username=self._username)
        self._report(False)
        return _state(row)

    # --- one login -----------------------------------------------------------

    def begin(self, fingerprint: str, *, deadline: float | None = None) -> str:
        """Count a login with ``fingerprint`` as failed until it reports; return its attempt id.

        Raises ``errors.LoginGuardTrippedError`` when the rules forbid the login,
        ``errors.TransientError`` when another process's login stays in flight
        past the wait allowed here (or the stop event is set).
        """
        give_up = self._clock() + self._max_wait
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            attempt, busy = self._try_begin(fingerprint)
            if attempt is not None:
                return attempt
            assert busy is not None  # noqa: S101  # for mypy: _try_begin returns one or the other
            left = give_up - self._clock()
            if left <= 0 or self._stop.is_set():
                raise errors.TransientError(
                    f"another process ({busy.pending_holder}) is logging in as {self._username!r}; "
                    "not logging in at the same time (its login ends or expires within "
                    f"{max(busy.lease_left or 0.0, 0.0):.0f} s)",
                    retry_after=max(busy.lease_left or 0.0, 0.0),
                )
            self._stop.wait(min(_POLL_SECONDS, left))

    def finish(
        self, attempt: str, fingerprint: str, outcome: Outcome, error: BaseException | None = None
    ) -> None:
        text = _error_text(error)
        try:
            with self._transaction() as cur:
                _record(
                    cur, outcome, {**self._key, "attempt": attempt, "fingerprint": fingerprint, "error": text}
                )
                row = cur.execute(queries.get("guard_state"), self._key).fetchone()
        except errors.SyncWorkerError as exc:
            # The attempt stays counted as failed meanwhile (the safe side); the next reading of
            # the row records the verdict, so this process does not wait out its own lease.
            with self._unrecorded_lock:
                self._unrecorded[attempt] = (fingerprint, outcome, text)
            _log.warning("login_verdict_not_recorded", outcome=outcome, error=type(exc).__name__, kept=True)
            return
        state = _state(row)
        status = GuardStatus(
            state,
            self._threshold,
            auth.refusal(state.failures, state.failed_fingerprints, fingerprint, self._threshold),
        )
        self._report(status.problem is not None)
        if outcome != "succeeded":
            _log.warning(
                "login_failure_recorded" if outcome != "throttled" else "login_throttled",
                username=self._username,
                outcome=outcome,
                failures=state.failures,
                threshold=self._threshold,
                ceiling=CEILING,
                tripped=status.blocked is not None,
            )

    # --- internals -------------------------------------------------------

    def _record_late(self) -> None:
        """Record the verdicts ``finish`` could not, each only while its reservation is still the
        pending login; one whose lease ran out meanwhile was counted as failed by whoever found it
        expired, and a late success must not zero failures recorded since. A database still
        unusable keeps them for the next reading (and the reading itself then decides)."""
        with self._unrecorded_lock:
            kept, self._unrecorded = self._unrecorded, {}
        if not kept:
            return
        done: list[tuple[str, Outcome, bool]] = []
        try:
            with self._transaction() as cur:
                self._adopt_spelling(cur)
                for attempt, (fingerprint, outcome, text) in kept.items():
                    state = _state(cur.execute(queries.get("guard_state"), self._key).fetchone())
                    ours = state.pending_attempt == attempt
                    if ours:
                        params = {**self._key, "attempt": attempt, "fingerprint": fingerprint, "error": text}
                        _record(cur, outcome, params)
                    done.append((attempt, outcome, ours))
        except errors.SyncWorkerError as exc:
            with self._unrecorded_lock:
                self._unrecorded = {**kept, **self._unrecorded}
            _log.info("login_verdict_still_not_recorded", error=type(exc).__name__, kept=len(kept))
            return
        for _, outcome, ours in done:
            _log.warning(
                "login_verdict_recorded_late" if ours else "login_verdict_dropped_lease_ended",
                username=self._username,
                outcome=outcome,
            )

    def _try_begin(self, fingerprint: str) -> tuple[str | None, GuardState | None]:
        self._record_late()
        with self._transaction() as cur:
            self._adopt_spelling(cur)
            cur.execute(queries.get("guard_ensure_row"), self._key)
            state = _state(cur.execute(queries.get("guard_state"), self._key).fetchone())
            if state.pending_live and not _holder_is_gone(state.pending_holder):
                return None, state
            if state.pending_attempt is not None:
                cur.execute(
                    queries.get("guard_expire_pending"), {**self._key, "attempt": state.pending_attempt}
                )
                _log.warning("login_outcome_unknown", holder=state.pending_holder, counted_as="failed")
                state = _state(cur.execute(queries.get("guard_state"), self._key).fetchone())
            reason = auth.refusal(state.failures, state.failed_fingerprints, fingerprint, self._threshold)
            if reason is not None:
                cur.execute(queries.get("guard_mark_tripped"), self._key)
            else:
                attempt = str(uuid.uuid4())
                cur.execute(
                    queries.get("guard_reserve"),
                    {
                        **self._key,
                        "attempt": attempt,
                        "fingerprint": fingerprint,
                        "lease_seconds": self._lease_seconds,
                        "holder": self._holder,
                    },
                )
        if reason is not None:
            self._report(True)
            _log.error("login_guard_tripped", username=self._username, failures=state.failures, reason=reason)
            raise auth.tripped_error(reason, self._username)
        return attempt, None

    def _adopt_spelling(self, cur: db.Cursor) -> None:
        cur.execute(queries.get("guard_adopt_spelling"), self._key)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[db.Cursor]:
        # Connecting fails closed: not knowing the count must not risk a lock-out. A kept
        # connection that died while idle (a database restart) is replaced before the transaction
        # begins; an error inside it retires the connection (db.transaction).
        with db.started(self._connect, db.ping) as (conn, _), db.transaction(conn) as cur:
            yield cur

    def _report(self, blocked: bool) -> None:
        if self._on_state is not None:
            self._on_state(blocked)


def _record(cur: db.Cursor, outcome: Outcome, params: dict[str, Any]) -> None:
    """The statement that records ``outcome`` for the attempt of ``params``."""
    if outcome == "succeeded":
        cur.execute(queries.get("guard_succeeded"), params)
    elif outcome == "throttled":
        cur.execute(queries.get("guard_not_judged"), params)
    else:
        cur.execute(queries.get("guard_failed"), {**params, "outcome": outcome})


def _holder_is_gone(holder: str | None) -> bool:
    """Whether the process named ``host:pid`` is provably not running: only knowable on this host.

    Lets a restarted worker go on at once after its predecessor was killed mid-login instead of
    waiting out the lease; the killed login stays counted as failed either way.
    """
    if holder is None:
        return False
    host, _, pid_text = holder.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _state(row: Any) -> GuardState:
    if row is None:
        return GuardState()
    return GuardState(
        failures=int(row[0]),
        failed_fingerprints=frozenset(row[1] or ()),
        last_outcome=row[2],
        last_attempt_at=row[3],
        last_success_at=row[4],
        last_failure_at=row[5],
        last_error=row[6],
        tripped_at=row[7],
        pending_attempt=None if row[8] is None else str(row[8]),
        pending_fingerprint=row[9],
        pending_holder=row[10],
        lease_left=None if row[11] is None else float(row[11]),
    )
