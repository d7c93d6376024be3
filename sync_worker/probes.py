"""What the daemon's probes learn from its loops: ``Liveness`` (``/healthz``, the ``/readyz`` claims
check, the claim-poll age and run-overdue metrics) and when a run counts as stuck (``overdue_after``).

Everything here is on the monotonic clock: a step of the wall clock (NTP, a VM resumed) neither
makes a healthy daemon look wedged nor hides a wedged one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final

from sync_worker import config, errors

# How often an idle replica looks for due accounts (a busy one also claims as each run ends).
CLAIM_POLL_SECONDS: Final = 1.0
# What a run may take beyond its budget besides a token request and a login (which the budget
# does not cut, each at most THINGSPACE_TOTAL_TIMEOUT): its last commit and bookkeeping.
OVERDUE_SLACK_SECONDS: Final = 60.0
# /readyz fails when the last successful claim poll is older than this: the replica cannot claim
# (the database is away or refuses writes), so it syncs nothing.
STALE_POLL_SECONDS: Final = 10 * CLAIM_POLL_SECONDS
# /healthz fails when the claim loop has not come round for this long: it is wedged, and only a
# restart helps. Far above the longest a poll may legitimately block (two connection attempts of
# 10 s, a statement on a dead peer until the 45 s TCP user timeout).
WEDGED_LOOP_SECONDS: Final = 120.0


class Liveness:
    """What ``/healthz`` and ``/readyz`` learn from the daemon, on the monotonic clock.

    ``scheduler.serve`` attaches its scheduler, its loop threads and the dispatcher's ``overdue_runs``
    once started and detaches them when shutdown begins; the dispatcher reports each claim poll.
    Alive (``check``, ``__call__``) unless one of these, each with its own reason: not attached, or
    the scheduler or a loop thread ended; the claim loop has not come round within
    ``WEDGED_LOOP_SECONDS`` (wedged); a run is far past its budget (``overdue_after``: every wait
    of a run is bounded, so it is stuck, and only a restart frees its thread; what it committed
    stays, its claim and lock pass on). Each is exactly when a restart helps. Ready
    (``check_claims``): a poll succeeded within ``stale_after`` seconds (``STALE_POLL_SECONDS``).
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, stale_after: float = STALE_POLL_SECONDS
    ) -> None:
        self._clock = clock
        self._stale_after = stale_after
        self._lock = threading.Lock()
        self._scheduler: Any = None
        self._loops: tuple[threading.Thread, ...] = ()
        self._overdue: Callable[[], dict[str, float]] | None = None
        self._created = clock()
        self._attached_at: float | None = None
        self._last_round: float | None = None
        self._last_ok: float | None = None
        self._last_error: str | None = None

    def __call__(self) -> bool:
        return self.check()[0]

    def check(self) -> tuple[bool, str]:
        """(alive, reason): why a restart would help, if it would."""
        with self._lock:
            sched, loops, overdue = self._scheduler, self._loops, self._overdue
            since = self._last_round or self._attached_at
        if sched is None or not sched.running or since is None:
            return False, "scheduler not running"
        thread = getattr(sched, "_thread", None)
        if thread is not None and not thread.is_alive():
            return False, "scheduler not running"
        ended = [loop.name for loop in loops if not loop.is_alive()]
        if ended:
            return False, f"loop threads ended: {', '.join(ended)}"
        idle = self._clock() - since
        if idle >= WEDGED_LOOP_SECONDS:
            return False, f"claim loop wedged: no round for {idle:.0f} s"
        late = overdue() if overdue is not None else {}
        if late:
            runs = ", ".join(f"{account} ({seconds:.0f} s)" for account, seconds in sorted(late.items()))
            return False, f"runs past their budget and margin by: {runs}"
        return True, "ok"

    def overdue_runs(self) -> dict[str, float]:
        """Seconds each in-flight run is past its budget and margin (only those that are)."""
        with self._lock:
            overdue = self._overdue
        return overdue() if overdue is not None else {}

    def attach(
        self,
        sched: Any,
        loops: tuple[threading.Thread, ...] = (),
        *,
        overdue: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        with self._lock:
            self._scheduler = sched
            self._loops = loops
            self._overdue = overdue
            self._attached_at = self._clock()

    def detach(self) -> None:
        with self._lock:
            self._scheduler = None
            self._loops = ()
            self._overdue = None

    # --- reported by the dispatcher -----------------------------------------

    def round_done(self) -> None:
        """The claim loop came round (whatever the poll's outcome)."""
        with self._lock:
            self._last_round = self._clock()

    def poll_succeeded(self) -> None:
        with self._lock:
            self._last_ok = self._clock()
            self._last_error = None

    def poll_failed(self, error: str) -> None:
        with self._lock:
            self._last_error = error

    # --- read by the probes and the metric ---------------------------------------

    def seconds_since_poll(self) -> float:
        """Seconds since the last successful claim poll (since this object was made, before any)."""
        with self._lock:
            since = self._last_ok if self._last_ok is not None else self._created
        return max(self._clock() - since, 0.0)

    def check_claims(self) -> None:
        """Raise ``errors.TransientError`` naming why when no claim poll succeeded lately."""
        with self._lock:
            last_ok, error = self._last_ok, self._last_error
        age = self.seconds_since_poll()
        if last_ok is not None and age <= self._stale_after:
            return
        when = (
            "no claim poll has succeeded yet"
            if last_ok is None
            else f"no successful claim poll for {age:.0f} s"
        )
        raise errors.TransientError(when if error is None else f"{when} (last error: {error})")


def overdue_after(settings: config.Settings) -> float:
    """Seconds after its start from which a run is stuck: its budget, then a token request and a
    login (never cut by the budget, each up to the total timeout) and a margin."""
    return settings.run_budget_seconds + 2 * settings.http_total_timeout + OVERDUE_SLACK_SECONDS
