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

import datetime
import functools
import threading
from collections.abc import Callable
from typing import Any, Final

import structlog
from apscheduler import events  # type: ignore[import-untyped,unused-ignore]
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped,unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped,unused-ignore]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped,unused-ignore]

from sync_worker import (
    claims,
    config,
    db,
    dispatch,
    errors,
    exitcodes,
    probes,
    retention,
    signals,
    status,
    store,
    sync,
)

_log = structlog.get_logger(__name__)
# How often the daemon reads the login guard (how the tripped gauge notices an `auth reset` elsewhere).
GUARD_OBSERVE_SECONDS: Final = 5.0
# How long shutdown waits for each loop thread (one blocked in a statement is left, as a daemon thread).
_LOOP_JOIN_SECONDS: Final = 5.0


def serve(
    settings: config.Settings,
    api: sync.HistoryApi,
    connect: db.ConnectionFactory,
    *,
    stop_event: threading.Event | None = None,
    metrics: sync.MetricsSink | None = None,
    observe_guard: Callable[[], object] | None = None,
    install_signal_handlers: bool = True,
    liveness: probes.Liveness | None = None,
    holder: str | None = None,
) -> int:
    """One replica of the daemon until ``stop_event`` is set (or SIGTERM/SIGINT); return the exit code.

    The caller (``app.run_daemon``) has checked the schema (``errors.SchemaError`` /
    ``errors.DatabaseUnavailableError``, CLI exit 3) before anything is served; a database that is
    there but refuses writes (read-only) does not stop the start: the daemon waits for it.
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
    heartbeat = liveness if liveness is not None else probes.Liveness()
    if metrics is not None:
        with db.session(connect) as conn:
            status.announce(conn, settings.account_names, metrics.account_configured)
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

    inflight = dispatch.InFlight()
    dispatcher = dispatch.Dispatcher(
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


def _build_scheduler(
    settings: config.Settings,
    dispatcher: dispatch.Dispatcher,
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
        args=(store.PostgresStore(dispatcher.connect),),
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


def _start_loops(settings: config.Settings, dispatcher: dispatch.Dispatcher) -> tuple[threading.Thread, ...]:
    """The claim poll, the renewals and the guard observer, each a thread of its own."""
    specs: list[tuple[str, float, Callable[[], None], bool]] = [
        ("claim", probes.CLAIM_POLL_SECONDS, dispatcher.poll, True),
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
