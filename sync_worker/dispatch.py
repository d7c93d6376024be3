"""The claim loop's side of the daemon: ``Dispatcher`` claims due accounts for this replica, runs
them on a bounded pool, renews their claims while they run and releases them with the next due
time when they end. ``claims`` has the SQL; ``scheduler`` runs the loops that call it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

import structlog

from sync_worker import claims, config, db, errors, outcomes, probes, store, sync

_log = structlog.get_logger(__name__)
# A run that could not even start (no connection, its first statement refused) is due again after
# this long (or its interval, if shorter), not a whole interval later.
START_RETRY_SECONDS: Final = 10.0
_T = TypeVar("_T")


@dataclasses.dataclass
class InFlight:
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
        inflight: InFlight,
        observe_guard: Callable[[], object] | None,
        holder: str,
        heartbeat: probes.Liveness | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self.heartbeat = heartbeat if heartbeat is not None else probes.Liveness()
        self._clock = clock
        self._overdue_after = probes.overdue_after(settings)
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
            # Read under the claim lock, which every start takes: no run begins between this and
            # the claim, and a run leaves the set only after its release was tried.
            running = self.running_accounts()
            try:
                claimed = self._on_connection(
                    lambda conn: claims.claim(
                        conn,
                        self._names,
                        holder=self.holder,
                        limit=free,
                        lease_seconds=self._lease,
                        running=running,
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
        result: outcomes.AccountResult | None = None
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
            result = outcomes.AccountResult(account, "failed", error=type(exc).__name__)
        finally:
            self._finished(account, result)
        # A slot just became free: fill it now rather than at the next poll.
        with contextlib.suppress(errors.SyncWorkerError):
            self.claim_due()

    def _finished(self, account: str, result: outcomes.AccountResult | None) -> None:
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
) -> outcomes.AccountResult | None:
    if stop.is_set():
        return None
    return sync.sync_account(
        api,
        account,
        store.PostgresStore(connect),
        deadline=time.monotonic() + budget_seconds,
        stop_event=stop,
        metrics=metrics,
        max_blocks=max_blocks,
        lock_report_after=lock_report_after,
    )
