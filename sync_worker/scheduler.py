"""The long-running daemon: one APScheduler interval job per account.

Shutdown has a single source of truth, a ``threading.Event``. SIGTERM/SIGINT
handlers only set it (installed only when running in the main thread, the only
place Python delivers signals); the main thread waits on it; account runs check
it between blocks, so the block in flight is committed before they return.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from apscheduler import events  # type: ignore[import-untyped,unused-ignore]
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped,unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped,unused-ignore]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped,unused-ignore]

from sync_worker import config, db, errors, exitcodes, migrations, retention, signals, status, sync

_log = structlog.get_logger(__name__)
_JOB_PREFIX: Final = "sync:"


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
    """Answers "is this process's scheduler running?" for ``/healthz``.

    ``run_daemon`` attaches its scheduler once started and detaches it when
    shutdown begins. A scheduler whose thread died (it never should) counts as
    not running, which is exactly when a restart helps.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduler: Any = None

    def __call__(self) -> bool:
        with self._lock:
            sched = self._scheduler
        if sched is None or not sched.running:
            return False
        thread = getattr(sched, "_thread", None)
        return thread is None or bool(thread.is_alive())

    def attach(self, sched: Any) -> None:
        with self._lock:
            self._scheduler = sched

    def detach(self) -> None:
        with self._lock:
            self._scheduler = None


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
) -> int:
    """Run until ``stop_event`` is set (or SIGTERM/SIGINT); return the exit code.

    Checks the schema first and raises ``errors.SchemaError`` /
    ``errors.DatabaseUnavailableError`` (CLI exit 3) before scheduling anything.
    Returns 0 after a clean shutdown, 1 when account runs were still busy after
    ``settings.shutdown_timeout_seconds``: their worker threads cannot be
    killed, so the caller should then leave with ``os._exit`` to honour the
    timeout. ``app.run_daemon`` builds ``api`` and ``connect`` from the settings;
    ``observe_guard`` is called at each account run (how the login-guard gauge
    notices an ``auth reset`` made elsewhere). ``liveness`` reports True from
    the scheduler's start until shutdown begins.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    with connect() as conn:
        migrations.check_schema(conn)
        if metrics is not None:
            _announce_accounts(conn, settings, metrics)

    inflight = _InFlight()
    scheduler = _build_scheduler(
        settings,
        api,
        connect=connect,
        stop=stop,
        metrics=metrics,
        inflight=inflight,
        observe_guard=observe_guard,
    )
    try:
        with signals.stop_on_signals(stop, enabled=install_signal_handlers):
            scheduler.start()
            if liveness is not None:
                liveness.attach(scheduler)
            _log.info(
                "daemon_started",
                accounts=list(settings.account_names),
                concurrency=settings.concurrency,
            )
            # A bounded wait keeps the main thread responsive to signals on
            # every platform; the event is still the only stop signal.
            while not stop.wait(1.0):
                pass
            if liveness is not None:
                liveness.detach()
            _log.info("daemon_stopping", running=inflight.running)
            # No new runs from here on; running ones see the stop event.
            scheduler.shutdown(wait=False)
            clean = inflight.wait_idle(settings.shutdown_timeout_seconds)
    finally:
        if liveness is not None:
            liveness.detach()
        if scheduler.running:
            scheduler.shutdown(wait=False)
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


def _build_scheduler(
    settings: config.Settings,
    api: sync.HistoryApi,
    *,
    connect: db.ConnectionFactory,
    stop: threading.Event,
    metrics: sync.MetricsSink | None,
    inflight: _InFlight,
    observe_guard: Callable[[], object] | None = None,
) -> Any:
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=settings.concurrency)},
        timezone=datetime.UTC,
    )
    now = datetime.datetime.now(datetime.UTC)
    for acct in settings.accounts:
        scheduler.add_job(
            _account_job,
            trigger=IntervalTrigger(seconds=acct.interval_seconds, jitter=acct.jitter_seconds or None),
            kwargs={
                "api": api,
                "account": acct.name,
                "connect": connect,
                "budget_seconds": settings.run_budget_seconds,
                "max_blocks": settings.max_blocks_per_run,
                "lock_report_after": sync.LOCK_REPORT_INTERVALS * acct.interval_seconds,
                "stop": stop,
                "metrics": metrics,
                "inflight": inflight,
                "observe_guard": observe_guard,
            },
            id=_JOB_PREFIX + acct.name,
            name=f"sync {acct.name}",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            # Late by up to half an interval still runs; later than that the
            # next regular run is closer, so skip (and say so via the listener).
            misfire_grace_time=max(1, int(acct.interval_seconds / 2)),
        )
    # Housekeeping on the same pool: next month's partitions exist before its first message, and
    # retention (when a window is set) runs at start and then daily.
    scheduler.add_job(
        sync.partitions_ahead,
        trigger=IntervalTrigger(hours=1),
        args=(connect,),
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
            kwargs={"connect": connect, "days": settings.retention_days, "stop": stop},
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
            done = retention.apply(conn, retention.plan(conn, retention.cutoff(days)), stop_event=stop)
    except errors.SyncWorkerError as exc:
        # Next day's run tries again; nothing half-done is left (each drop and batch is its own transaction).
        _log.warning("retention_failed", days=days, error=str(exc))
        return
    _log.info("retention_applied", days=days, **done.as_dict())


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
    inflight: _InFlight,
    observe_guard: Callable[[], object] | None = None,
) -> sync.AccountResult | None:
    inflight.enter()
    try:
        if stop.is_set():
            return None
        if observe_guard is not None:
            _observe_guard(observe_guard)
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
    finally:
        inflight.leave()


def _observe_guard(observe: Callable[[], object]) -> None:
    # An operator's `auth reset` happens in another process; reading the
    # guard at each run is how the tripped gauge goes back to 0 without a login.
    try:
        observe()
    except errors.SyncWorkerError as exc:
        # The run itself will meet (and report) the same database problem.
        _log.debug("login_guard_unreadable", error=type(exc).__name__)


def _on_event(event: Any, *, metrics: sync.MetricsSink | None) -> None:
    job_id = str(getattr(event, "job_id", ""))
    account = job_id[len(_JOB_PREFIX) :] if job_id.startswith(_JOB_PREFIX) else None
    if event.code == events.EVENT_JOB_MISSED:
        kind = "missed"
        _log.warning("job_missed", account=account, scheduled=str(event.scheduled_run_time))
    elif event.code == events.EVENT_JOB_MAX_INSTANCES:
        kind = "max_instances"
        _log.warning("job_still_running", account=account, action="this run skipped")
    else:
        kind = "job_error"
        exc = getattr(event, "exception", None)
        _log.error(
            "job_error",
            account=account,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
            traceback=getattr(event, "traceback", None),
        )
        if metrics is not None:
            metrics.error(account, "job_error")
    if metrics is not None:
        metrics.scheduler_event(kind, account)
