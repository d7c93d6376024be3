"""The long-running daemon: replicas share the accounts through claims in Postgres.

Each replica registers its configured accounts in ``sync_schedule`` (at start and every third of
the lease, so a deleted row comes back) and, on a short poll on the monotonic clock (and right
after each of its runs ends), claims the earliest due accounts nobody holds, as many as it has
free slots (``SYNC_CONCURRENCY``). A run's claim is renewed while it goes on and
released when it ends, with the account next due one interval (plus jitter) after the claim began.
So each account is synced once per interval whatever the number of replicas, a replica that joins
takes a share by claiming, and one that dies or is cut off hands its accounts over when its leases
run out (``SYNC_CLAIM_LEASE_SECONDS``). ``claims`` has the SQL side; the account advisory lock
(``sync``) still keeps two runs of one account from ever overlapping.

Time inside the process is monotonic. The claim poll, the claim renewals and the login-guard
observer are loops on threads of their own that wait for their next turn on the stop event
(``Event.wait`` times out on the monotonic clock), so a step of the wall clock (NTP, a VM resumed)
cannot stall them; leases and due times are the database's ``now()``. APScheduler keeps only the
housekeeping (partitions hourly, retention daily), where wall-clock time is what is meant.

Shutdown has a single source of truth, a ``threading.Event``. SIGTERM/SIGINT
handlers only set it (installed only when running in the main thread, the only
place Python delivers signals); the main thread and the loops wait on it; account
runs check it between blocks, so the block in flight is committed before they return.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import structlog
from apscheduler import events  # type: ignore[import-untyped,unused-ignore]
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped,unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped,unused-ignore]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped,unused-ignore]

from sync_worker import claims, config, db, errors, exitcodes, migrations, retention, signals, status, sync

_log = structlog.get_logger(__name__)
_JOB_PREFIX: Final = "sync:"
# How often an idle replica looks for due accounts (a busy one also claims as each run ends).
CLAIM_POLL_SECONDS: Final = 1.0
# How often the daemon reads the login guard (how the tripped gauge notices an `auth reset` elsewhere).
GUARD_OBSERVE_SECONDS: Final = 5.0
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
# A run that could not even start (no connection, its first statement refused) is due again after
# this long (or its interval, if shorter), not a whole interval later.
START_RETRY_SECONDS: Final = 10.0
# How long shutdown waits for each loop thread (one blocked in a statement is left, as a daemon thread).
_LOOP_JOIN_SECONDS: Final = 5.0
_T = TypeVar("_T")


@dataclasses.dataclass
class _InFlight:
    """Counts running account jobs so shutdown can wait for them with a timeout."""

    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    running: int = 0

    def enter(self) -> None:
        with self.cond:
            self.running += 1

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.running == 0, timeout=timeout)


class Liveness:
    """What ``/healthz`` and ``/readyz`` learn from the daemon, on the monotonic clock.

    ``run_daemon`` attaches its scheduler, its loop threads and the dispatcher's ``overdue_runs``
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


def run_daemon(
    settings: config.Settings,
    api: sync.HistoryApi,
    connect: db.ConnectionFactory,
    *,
    stop_event: threading.Event | None = None,
    metrics: sync.MetricsSink | None = None,
    observe_guard: Callable[[], object] | None = None,
    install_signal_handlers: bool = True,
    liveness: Liveness | None = None,
    holder: str | None = None,
) -> int:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT); return the exit code.

    Checks the schema first and raises ``errors.SchemaError`` /
    ``errors.DatabaseUnavailableError`` (CLI exit 3) before scheduling anything; a database that
    is there but refuses writes (read-only) does not stop the start: the daemon waits for it.
    Returns 0 after a clean shutdown, 1 when account runs were still busy after
    ``settings.shutdown_timeout_seconds``: their worker threads cannot be
    killed, so the caller should then leave with ``os._exit`` to honour the
    timeout. ``app.run_daemon`` builds ``api`` and ``connect`` from the settings;
    ``observe_guard`` is called every ``GUARD_OBSERVE_SECONDS`` (how the login-guard
    gauge notices an ``auth reset`` made elsewhere). ``liveness`` hears of every claim
    poll and reports alive from the start until shutdown begins. ``holder`` names this
    replica's claims (default: host, pid and a random part).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    holder = holder or claims.holder_id()
    heartbeat = liveness if liveness is not None else Liveness()
    with db.session(connect) as conn:
        migrations.check_schema(conn)
        if metrics is not None:
            _announce_accounts(conn, settings, metrics)
    try:
        with db.session(connect) as conn:
            claims.register(
                conn, settings.account_names, holder=holder, lease_seconds=settings.claim_lease_seconds
            )
    except errors.SyncWorkerError as exc:
        # The database is there and its schema right, but refuses the write (read-only during a
        # failover, a failing statement): the daemon starts anyway, as it goes on when this happens
        # later. The renew loop registers again; until then claims fail and /readyz says why.
        _log.warning("register_failed", error=f"{type(exc).__name__}: {exc}")

    inflight = _InFlight()
    dispatcher = Dispatcher(
        settings,
        api,
        connect,
        stop=stop,
        metrics=metrics,
        inflight=inflight,
        observe_guard=observe_guard,
        holder=holder,
        heartbeat=heartbeat,
    )
    scheduler = _build_scheduler(settings, dispatcher, metrics=metrics)
    loops: tuple[threading.Thread, ...] = ()
    clean = False
    try:
        with signals.stop_on_signals(stop, enabled=install_signal_handlers):
            scheduler.start()
            loops = _start_loops(settings, dispatcher)
            heartbeat.attach(scheduler, loops, overdue=dispatcher.overdue_runs)
            _log.info(
                "daemon_started",
                accounts=list(settings.account_names),
                concurrency=settings.concurrency,
                holder=dispatcher.holder,
            )
            # A bounded wait keeps the main thread responsive to signals on
            # every platform; the event is still the only stop signal.
            while not stop.wait(1.0):
                pass
            heartbeat.detach()
            _log.info("daemon_stopping", running=inflight.running)
            # No new claims from here on (the loops end on the stop event); running runs see it too.
            scheduler.shutdown(wait=False)
            clean = inflight.wait_idle(settings.shutdown_timeout_seconds)
    finally:
        # The loops end at the event; one still inside a statement finds the dispatcher closed.
        stop.set()
        heartbeat.detach()
        if scheduler.running:
            scheduler.shutdown(wait=False)
        dispatcher.close(clean=clean)
        for loop in loops:
            loop.join(timeout=_LOOP_JOIN_SECONDS)
    if not clean:
        _log.error(
            "daemon_shutdown_timeout",
            running=inflight.running,
            timeout=settings.shutdown_timeout_seconds,
        )
        # In-flight account runs did not finish within the shutdown timeout.
        return exitcodes.FAILED
    _log.info("daemon_stopped")
    return exitcodes.OK


def _announce_accounts(conn: Any, settings: config.Settings, metrics: sync.MetricsSink) -> None:
    """Every configured account gets its freshness series now, seeded with its
    last success from the database, so a stale-account alert works from the
    first scrape and across restarts, before (or without) any successful run."""
    last: dict[str, float] = {}
    for account_state in status.account_status(conn):
        if account_state.last_success_at is not None:
            last[account_state.account_name] = account_state.last_success_at.timestamp()
    for name in settings.account_names:
        metrics.account_configured(name, last.get(name))


class Dispatcher:
    """Claims due accounts for this replica and runs them on a bounded pool.

    One connection carries the claims, renewals and releases; account runs use their own
    (``sync``). Any error on it retires it (not only a lost connection: a session opened while the
    database was read-only stays read-only), as does age (``db.MAX_CONNECTION_AGE_SECONDS``), and a
    statement that fails on the kept connection is tried once more on a fresh one. A slot is taken
    when an account is claimed and given back when its run has released the claim, so a replica
    never claims more than it can start.
    """

    def __init__(
        self,
        settings: config.Settings,
        api: sync.HistoryApi,
        connect: db.ConnectionFactory,
        *,
        stop: threading.Event,
        metrics: sync.MetricsSink | None,
        inflight: _InFlight,
        observe_guard: Callable[[], object] | None,
        holder: str,
        heartbeat: Liveness | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self.heartbeat = heartbeat if heartbeat is not None else Liveness()
        self._clock = clock
        self._overdue_after = overdue_after(settings)
        self._settings = settings
        self._accounts = {acct.name: acct for acct in settings.accounts}
        self._names = list(self._accounts)
        self._api = api
        # Public: the housekeeping jobs (partitions, retention) use the same database and stop event.
        self.connect = connect
        self.stop = stop
        self.metrics = metrics
        self._inflight = inflight
        self.observe_guard = observe_guard
        self._lease = settings.claim_lease_seconds
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.concurrency, thread_name_prefix="sync")
        self._conn: db.Connection | None = None
        self._conn_born = 0.0
        self._conn_lock = threading.Lock()
        # One claimer at a time: two would both count the same free slots.
        self._claim_lock = threading.Lock()
        self._running_lock = threading.Lock()
        # Account -> when its run was claimed (clock()).
        self._running: dict[str, float] = {}
        self._started = clock()
        self._closed = False

    def running_accounts(self) -> list[str]:
        with self._running_lock:
            return sorted(self._running)

    def overdue_runs(self) -> dict[str, float]:
        """Seconds each in-flight run is past ``overdue_after`` (only the runs that are)."""
        now = self._clock()
        with self._running_lock:
            started = list(self._running.items())
        return {
            account: now - since - self._overdue_after
            for account, since in started
            if now - since > self._overdue_after
        }

    def _on_connection(self, work: Callable[[db.Connection], _T]) -> _T:
        with self._conn_lock:
            if self._closed:
                # A claim job still finishing after the stop must not open a connection nobody closes.
                raise errors.DatabaseUnavailableError("the daemon is stopping")
            for attempt in range(2):
                conn, reused = self._connection()
                try:
                    return work(conn)
                except errors.SyncWorkerError:
                    # Whatever the error, this session is suspect: the next statement gets a new one.
                    self._drop_connection()
                    if not reused or attempt:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> tuple[db.Connection, bool]:
        """The kept connection if it may still serve, else a new one; and whether it was kept."""
        conn = self._conn
        if (
            conn is not None
            and db.usable(conn)
            and self._clock() - self._conn_born < db.MAX_CONNECTION_AGE_SECONDS
        ):
            return conn, True
        self._drop_connection()
        self._conn = self.connect()
        self._conn_born = self._clock()
        return self._conn, False

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def claim_due(self) -> int:
        """Claim due accounts for every free slot and start them; return how many started."""
        if self.stop.is_set() or not self._claim_lock.acquire(blocking=False):
            return 0
        try:
            free = self._settings.concurrency - self._inflight.running
            if free <= 0:
                # Nothing to claim with: the poll is fine, the replica is busy.
                self.heartbeat.poll_succeeded()
                return 0
            try:
                claimed = self._on_connection(
                    lambda conn: claims.claim(
                        conn, self._names, holder=self.holder, limit=free, lease_seconds=self._lease
                    )
                )
            except errors.SyncWorkerError as exc:
                self.heartbeat.poll_failed(f"{type(exc).__name__}: {exc}")
                raise
            self.heartbeat.poll_succeeded()
            for item in claimed:
                self._start(item)
            return len(claimed)
        finally:
            self._claim_lock.release()

    def _start(self, item: claims.Claimed) -> None:
        interval = self._accounts[item.account].interval_seconds
        # In the first interval after a start everything overdue is late (a restart after
        # downtime, a new deployment): that is catching up, not a shortage of capacity.
        warmed_up = self._clock() - self._started > interval
        if item.late_seconds > interval / 2 and warmed_up:
            # Claimed more than half an interval after it was due: this replica set is
            # short of capacity (or was away); the account is still synced now.
            _log.warning("run_late", account=item.account, late_seconds=round(item.late_seconds, 1))
            if self.metrics is not None:
                self.metrics.scheduler_event("missed", item.account)
        self._inflight.enter()
        with self._running_lock:
            self._running[item.account] = self._clock()
        try:
            self._pool.submit(self._run, item.account)
        except RuntimeError:
            # The pool is shut down (stopping): hand the account back at once.
            self._finished(item.account, None)

    def _run(self, account: str) -> None:
        result: sync.AccountResult | None = None
        try:
            result = _account_job(
                api=self._api,
                account=account,
                connect=self.connect,
                budget_seconds=self._settings.run_budget_seconds,
                max_blocks=self._settings.max_blocks_per_run,
                lock_report_after=sync.lock_report_after(self._accounts[account].interval_seconds),
                stop=self.stop,
                metrics=self.metrics,
            )
        except Exception as exc:
            # A bug must end this account's run, not the daemon.
            _log.exception("job_error", account=account, error=f"{type(exc).__name__}: {exc}")
            if self.metrics is not None:
                self.metrics.error(account, "job_error")
                self.metrics.scheduler_event("job_error", account)
            result = sync.AccountResult(account, "failed", error=type(exc).__name__)
        finally:
            self._finished(account, result)
        # A slot just became free: fill it now rather than at the next poll.
        with contextlib.suppress(errors.SyncWorkerError):
            self.claim_due()

    def _finished(self, account: str, result: sync.AccountResult | None) -> None:
        acct = self._accounts[account]
        try:
            if result is None or result.outcome == "interrupted":
                # Stopping: the account is due again at once, for another replica.
                delay, from_now = 0.0, True
            elif not result.begun:
                # The run could not start (the database refused its first statement): nothing was
                # synced, so try again soon rather than an interval later.
                delay, from_now = min(acct.interval_seconds, START_RETRY_SECONDS), True
            elif result.more_waiting:
                # The budget ended a run that was making progress, with more queued: go on at
                # once (the claim order still serves accounts due earlier first).
                delay, from_now = 0.0, True
            elif result.outcome == "skipped_locked":
                # Another process (a `once` run, a replica cut off mid-run) runs it: look again
                # soon, but not in a loop.
                delay, from_now = min(acct.interval_seconds, self._lease), True
            else:
                delay, from_now = next_delay(acct), False
            self._on_connection(
                lambda conn: claims.release(
                    conn, account, holder=self.holder, delay_seconds=delay, from_now=from_now
                )
            )
        except errors.SyncWorkerError as exc:
            # The claim expires by itself after the lease; the account is then due again.
            _log.warning("claim_release_failed", account=account, error=type(exc).__name__)
        finally:
            with self._running_lock:
                self._running.pop(account, None)
            self._inflight.leave()

    def register_and_renew(self) -> None:
        """The renew loop: register the configured accounts again, then renew the claims of the
        running ones."""
        self.register()
        self.renew()

    def register(self) -> None:
        """Put back any configured account whose schedule row is gone (``accounts forget``, a
        hand-made delete: it would otherwise never be claimed again until a restart) and record
        this replica as serving its accounts, which ``forget`` refuses. One statement per
        heartbeat whatever the number of accounts; nothing is added to the claim poll."""
        try:
            restored = self._on_connection(
                lambda conn: claims.register(conn, self._names, holder=self.holder, lease_seconds=self._lease)
            )
        except errors.SyncWorkerError as exc:
            # The next heartbeat tries again; a missing row only waits until then.
            _log.warning("register_failed", error=type(exc).__name__)
            return
        if restored:
            _log.warning("schedule_rows_restored", accounts=restored)

    def renew(self) -> None:
        """Extend the claims of the running accounts."""
        running = self.running_accounts()
        if not running:
            return
        try:
            renewed = self._on_connection(
                lambda conn: claims.renew(conn, running, holder=self.holder, lease_seconds=self._lease)
            )
        except errors.SyncWorkerError as exc:
            # Cut off: the claims will expire and other replicas take the accounts over; the
            # advisory lock keeps them from running an account this replica still drains.
            _log.warning("claim_renew_failed", running=len(running), error=type(exc).__name__)
            return
        # Still running after the renewal: a run that ended meanwhile released its claim itself.
        lost = sorted((set(running) - set(renewed)) & set(self.running_accounts()))
        if lost:
            # Taken over after this replica's lease ran out (or forgotten): the run goes on under
            # the advisory lock, but the claim is the other holder's now.
            _log.warning("claim_lost", accounts=lost)

    def poll(self) -> None:
        """One round of the claim loop: claim what is due, and tell the heartbeat the loop came round."""
        try:
            self.claim_due()
        except errors.SyncWorkerError as exc:
            # The database is away or refuses writes: nothing can be claimed; the next poll tries
            # again (on a fresh connection), and /readyz says so once it lasts.
            _log.warning("claim_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.heartbeat.round_done()

    def close(self, *, clean: bool) -> None:
        """Stop the pool; hand back claims still held (runs cut short by the shutdown timeout)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not clean:
            with contextlib.suppress(errors.SyncWorkerError):
                self._on_connection(lambda conn: claims.release_all(conn, holder=self.holder))
        with self._conn_lock:
            self._closed = True
            self._drop_connection()


def next_delay(acct: config.AccountSettings, rand: Callable[[], float] = random.random) -> float:
    """Seconds from a claim to the account's next due time: the interval plus up to the jitter."""
    return acct.interval_seconds + rand() * acct.jitter_seconds


def _build_scheduler(
    settings: config.Settings,
    dispatcher: Dispatcher,
    *,
    metrics: sync.MetricsSink | None,
) -> Any:
    scheduler = BackgroundScheduler(
        # Partitions and retention: one never waits for the other.
        executors={"default": ThreadPoolExecutor(max_workers=2)},
        timezone=datetime.UTC,
    )
    now = datetime.datetime.now(datetime.UTC)
    # Housekeeping on the same pool: next month's partitions exist before its first message, and
    # retention (when a window is set) runs at start and then daily.
    scheduler.add_job(
        sync.partitions_ahead,
        trigger=IntervalTrigger(hours=1),
        args=(dispatcher.connect,),
        id="partitions",
        name="history partitions ahead",
        next_run_time=now,
        max_instances=1,
        coalesce=True,
    )
    if settings.retention_days is not None:
        scheduler.add_job(
            _retention_job,
            trigger=IntervalTrigger(hours=24),
            kwargs={"connect": dispatcher.connect, "days": settings.retention_days, "stop": dispatcher.stop},
            id="retention",
            name="retention",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
        )
    scheduler.add_listener(
        functools.partial(_on_event, metrics=metrics),
        events.EVENT_JOB_MISSED | events.EVENT_JOB_MAX_INSTANCES | events.EVENT_JOB_ERROR,
    )
    return scheduler


def _retention_job(*, connect: db.ConnectionFactory, days: int, stop: threading.Event) -> None:
    try:
        with db.session(connect) as conn:
            outcome = retention.run(conn, days, stop_event=stop)
    except errors.SyncWorkerError as exc:
        # Next day's run tries again; nothing half-done is left (each drop and batch is its own transaction).
        _log.warning("retention_failed", days=days, error=str(exc))
        return
    if outcome is None:
        _log.info("retention_skipped", days=days, reason="another replica is applying retention")
        return
    _log.info("retention_applied", days=days, **outcome[1].as_dict())


def _start_loops(settings: config.Settings, dispatcher: Dispatcher) -> tuple[threading.Thread, ...]:
    """The claim poll, the renewals and the guard observer, each a thread of its own."""
    specs: list[tuple[str, float, Callable[[], None], bool]] = [
        ("claim", CLAIM_POLL_SECONDS, dispatcher.poll, True),
        # Three renewals per lease: one lost renewal does not lose a claim.
        ("renew", max(0.2, settings.claim_lease_seconds / 3), dispatcher.register_and_renew, False),
    ]
    if dispatcher.observe_guard is not None:
        # Not at every run: the read locks the user's one login_guard row, and thousands of runs a
        # minute across replicas would queue on it.
        observe = functools.partial(_observe_guard, dispatcher.observe_guard)
        specs.append(("guard", GUARD_OBSERVE_SECONDS, observe, True))
    loops = []
    for name, every, work, at_once in specs:
        thread = threading.Thread(
            target=_every,
            args=(every, work, dispatcher.stop),
            kwargs={"metrics": dispatcher.metrics, "name": name, "at_once": at_once},
            name=f"sync-{name}",
            daemon=True,
        )
        thread.start()
        loops.append(thread)
    return tuple(loops)


def _every(
    seconds: float,
    work: Callable[[], None],
    stop: threading.Event,
    *,
    metrics: sync.MetricsSink | None,
    name: str,
    at_once: bool,
) -> None:
    """Call ``work`` every ``seconds`` (measured from the end of the previous call) until ``stop``.

    ``Event.wait`` times out on the monotonic clock, so a wall-clock step neither stalls nor
    hurries the loop. A call never overlaps the previous one; a slow one delays the next.
    """
    if not at_once and stop.wait(seconds):
        return
    while not stop.is_set():
        try:
            work()
        except Exception as exc:
            # A bug must not end the loop (the poll of the whole replica).
            _log.exception("job_error", job=name, error=f"{type(exc).__name__}: {exc}")
            if metrics is not None:
                metrics.error(None, "job_error")
                metrics.scheduler_event("job_error", None)
        if stop.wait(seconds):
            return


def _account_job(
    *,
    api: sync.HistoryApi,
    account: str,
    connect: db.ConnectionFactory,
    budget_seconds: float,
    stop: threading.Event,
    max_blocks: int = config.DEFAULT_MAX_BLOCKS_PER_RUN,
    lock_report_after: float | None = None,
    metrics: sync.MetricsSink | None,
) -> sync.AccountResult | None:
    if stop.is_set():
        return None
    return sync.sync_account(
        api,
        account,
        connect,
        deadline=time.monotonic() + budget_seconds,
        stop_event=stop,
        metrics=metrics,
        max_blocks=max_blocks,
        lock_report_after=lock_report_after,
    )


def _observe_guard(observe: Callable[[], object]) -> None:
    # An operator's `auth reset` happens in another process; reading the
    # guard at each run is how the tripped gauge goes back to 0 without a login.
    try:
        observe()
    except errors.SyncWorkerError as exc:
        # The run itself will meet (and report) the same database problem.
        _log.debug("login_guard_unreadable", error=type(exc).__name__)


def _on_event(event: Any, *, metrics: sync.MetricsSink | None) -> None:
    # Only the housekeeping jobs run on APScheduler; account runs report their own outcomes.
    job = str(getattr(event, "job_id", ""))
    if event.code == events.EVENT_JOB_MISSED:
        kind = "missed"
        _log.warning("job_missed", job=job, scheduled=str(event.scheduled_run_time))
    elif event.code == events.EVENT_JOB_MAX_INSTANCES:
        kind = "max_instances"
        _log.warning("job_still_running", job=job, action="this run skipped")
    else:
        kind = "job_error"
        exc = getattr(event, "exception", None)
        _log.error(
            "job_error",
            job=job,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
            traceback=getattr(event, "traceback", None),
        )
        if metrics is not None:
            metrics.error(None, "job_error")
    if metrics is not None:
        metrics.scheduler_event(kind, None)
