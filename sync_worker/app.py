"""Wiring: settings -> connections -> login guard -> client -> sync, scheduler or receiver.

Every entry point (the CLI, the demo, tests, benchmarks) builds the worker's
parts here, so each part is built one way: ``connector`` and ``connection`` for
Postgres (``database_ready``: the fail-fast check and the readiness check),
``login_guard``, ``guard_observer`` and ``api_client`` for ThingSpace,
``health_server`` for ``/metrics``, ``/healthz`` and ``/readyz``, ``sync_once`` and
``run_pass`` for one pass, ``run_daemon`` for the daemon and ``receive`` for the
callback receiver. A command (``commands``) is its arguments, one call here and
an exit code. The modules below know nothing of ``config.Settings`` beyond the
values handed to them.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

import structlog

from sync_worker import (
    client,
    config,
    db,
    errors,
    exitcodes,
    guard,
    migrations,
    outcomes,
    probes,
    retry,
    signals,
    status,
    store,
    sync,
)

if TYPE_CHECKING:
    from sync_worker import callback_metrics, metrics, receiver

# The daemon's scheduler (apscheduler), Prometheus, the HTTP servers and the callback receiver are
# imported where they are built: `once`, which needs none of them by default, starts without
# their import cost.

# The Pushgateway job of `once` (the daemon is scraped instead); alert rules select on it.
PUSH_JOB: Final = "thingspace-sms-sync-once"

_log = structlog.get_logger(__name__)


def connector(settings: config.Settings, *, connect_timeout: int = 10) -> db.ConnectionFactory:
    """Connections to ``SYNC_DATABASE_URL``; a failure names the variable, never the password."""
    return db.connector(
        settings.database_url,
        failure=f"SYNC_DATABASE_URL: cannot connect to {db.describe(settings.database_url)}",
        connect_timeout=connect_timeout,
    )


# Pooled connections beside the account runs: the login guard, its observer, and the two
# housekeeping jobs (partitions, retention), which may all be busy while every run is.
SHARED_CONNECTIONS = 4


@contextlib.contextmanager
def connection(settings: config.Settings, *, check_schema: bool = True) -> Iterator[db.Connection]:
    """A connection to ``SYNC_DATABASE_URL``, closed on exit; the schema checked first unless
    ``check_schema`` is false (``errors.DatabaseUnavailableError`` / ``errors.SchemaError``: exit 3)."""
    with connector(settings)() as conn:
        if check_schema:
            migrations.check_schema(conn)
        yield conn


def database_ready(settings: config.Settings) -> None:
    """The database answers and its schema is current: a command's fail-fast check before it
    starts anything, and the ``database`` check of every ``/readyz``. Raises as ``connection``."""
    with connection(settings):
        pass


def migrate(settings: config.Settings, *, create_database: bool = False) -> list[str]:
    """``migrate``: the database created first with ``create_database`` (needs CREATEDB), then the
    pending migrations applied (under their advisory lock); the versions applied."""
    if create_database:
        created = db.create_database(
            settings.database_url, failure=f"SYNC_DATABASE_URL: {db.describe(settings.database_url)}"
        )
        if created is not None:
            _log.info("database_created", database=created)
    with connection(settings, check_schema=False) as conn:
        applied = migrations.migrate(conn)
    _log.info("migrated", applied=list(applied))
    return applied


def enable_word_search(settings: config.Settings) -> bool:
    """``migrate --word-search``: the opt-in word-search index created if missing (True: now)."""
    with connection(settings, check_schema=False) as conn:
        created = migrations.enable_word_search(conn)
    _log.info("word_search_enabled", created=created)
    return created


@contextlib.contextmanager
def pooled(settings: config.Settings) -> Iterator[db.Pool]:
    """``connector`` with connections kept for reuse (psycopg_pool, as ``db.Pool`` configures it):
    at most one per account run plus ``SHARED_CONNECTIONS``, so nothing ever waits for one."""
    with db.Pool(
        connector(settings), name="sync-worker", max_size=settings.concurrency + SHARED_CONNECTIONS
    ) as pool:
        yield pool


def client_config(
    settings: config.Settings,
    *,
    login_guard: guard.LoginGuard | None = None,
    observer: Any = None,
    sleep: Callable[[float], None] | None = None,
) -> client.ClientConfig:
    return client.ClientConfig(
        base_url=settings.base_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        username=settings.username,
        password=settings.password,
        timeout=(settings.http_connect_timeout, settings.http_read_timeout),
        total_timeout=settings.http_total_timeout,
        retry=retry.RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            max_backoff=settings.retry_max_wait_seconds,
            max_retry_after=settings.retry_max_retry_after_seconds,
            sleep=sleep if sleep is not None else time.sleep,
        ),
        login_guard=login_guard,
        # Read again at each login: a corrected secret file is used without a restart.
        credentials=settings.credentials,
        allow_insecure_loopback=settings.allow_insecure_loopback,
        observer=observer,
        # One kept-alive connection per concurrent account run: a smaller pool makes the extra
        # runs open (and drop) a TCP connection for every request.
        pool_size=max(10, settings.concurrency),
    )


def login_guard(
    settings: config.Settings,
    connect: db.ConnectionFactory,
    *,
    stop_event: threading.Event | None = None,
    on_state: Callable[[bool], None] | None = None,
) -> guard.LoginGuard:
    """The login guard of the configured user (one count per user, whatever ``base_url`` says)."""
    return guard.LoginGuard(
        connect,
        username=settings.username,
        threshold=settings.login_guard_threshold,
        # A login cannot take longer than the total timeout of one exchange: guard.login_lease.
        lease_seconds=guard.login_lease(settings.http_total_timeout),
        stop_event=stop_event,
        on_state=on_state,
    )


def current_fingerprint(settings: config.Settings) -> str:
    """The fingerprint of the credentials as they are now (secret files read again)."""
    return settings.credentials().fingerprint(settings.base_url)


def guard_observer(settings: config.Settings, the_guard: guard.LoginGuard) -> Callable[[], guard.GuardStatus]:
    """Reads ``the_guard`` for the credentials as they are now (secret files read again); each
    read also tells the guard's ``on_state`` (the tripped gauge), which is how the gauge notices an
    ``auth reset`` made in another process."""

    def observe() -> guard.GuardStatus:
        return the_guard.observe(current_fingerprint(settings))

    return observe


def guard_ready(observe: Callable[[], guard.GuardStatus]) -> Callable[[], None]:
    """The ``login_guard`` readiness check: ``errors.LoginGuardTrippedError`` while the guard refuses."""

    def check() -> None:
        found = observe()
        if found.problem is not None:
            raise errors.LoginGuardTrippedError(found.problem)

    return check


def guard_status(settings: config.Settings) -> guard.GuardStatus:
    """The database checked (exit 3), then the guard's verdict for the credentials as they are now."""
    database_ready(settings)
    return login_guard(settings, connector(settings)).status(current_fingerprint(settings))


def guard_problem(settings: config.Settings) -> str | None:
    """Why the configured user cannot log in now, or None (also when no user is configured)."""
    if not settings.username:
        return None
    the_guard = login_guard(settings, connector(settings))
    if settings.client_id and settings.client_secret and settings.password:
        return the_guard.status(current_fingerprint(settings)).problem
    # No credentials here (a monitoring host): judge by the recorded count alone.
    state = the_guard.state()
    if state.failures >= settings.login_guard_threshold:
        return f"login guard tripped: {state.failures} failed logins in a row recorded"
    return None


@contextlib.contextmanager
def health_server(
    settings: config.Settings,
    metrics: metrics.Metrics,
    *,
    live: Callable[[], bool | tuple[bool, str]],
    ready: Sequence[tuple[str, Callable[[], None]]] = (),
) -> Iterator[None]:
    """``/metrics``, ``/healthz`` (``live``) and ``/readyz`` on ``SYNC_METRICS_PORT`` while the block
    runs (nothing when it is unset). ``/readyz`` checks the database first, then ``ready``."""
    if settings.metrics_port is None:
        yield
        return
    from sync_worker import health  # noqa: PLC0415  # see the imports above

    database: Callable[[], None] = functools.partial(database_ready, settings)
    checks = [("database", database), *ready]
    server = health.HealthServer(settings.metrics_port, metrics, live=live, ready=health.checks(checks))
    server.start()
    try:
        yield
    finally:
        server.stop()


@contextlib.contextmanager
def command_client(settings: config.Settings) -> Iterator[client.ThingSpaceClient]:
    """The client of an operator's command (``send``, ``callbacks``...), closed on exit. The
    database must answer first: the login goes through the guard kept there."""
    connect = connector(settings)
    with connect():
        pass
    with api_client(settings, connect) as (api, _):
        yield api


@contextlib.contextmanager
def api_client(
    settings: config.Settings,
    connect: db.ConnectionFactory,
    *,
    metrics: sync.MetricsSink | None = None,
    stop_event: threading.Event | None = None,
) -> Iterator[tuple[client.ThingSpaceClient, guard.LoginGuard]]:
    """The one shared (thread-safe) client and its login guard; the client is closed on exit.

    With ``stop_event``, retry and ``Retry-After`` waits (and a wait for another process's login)
    end as soon as it is set.
    """
    the_guard = login_guard(
        settings,
        connect,
        stop_event=stop_event,
        on_state=metrics.login_guard if metrics is not None else None,
    )
    observer = metrics.api_observer() if metrics is not None else None
    sleep = None if stop_event is None else sync.stoppable_sleep(stop_event)
    api = client.ThingSpaceClient(
        client_config(settings, login_guard=the_guard, observer=observer, sleep=sleep)
    )
    try:
        yield api, the_guard
    finally:
        api.close()


def sync_once(
    settings: config.Settings,
    *,
    accounts: Sequence[str] | None = None,
    stop_event: threading.Event | None = None,
    metrics: sync.MetricsSink | None = None,
    api: sync.HistoryApi | None = None,
    connect: db.ConnectionFactory | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> outcomes.PassResult:
    """One pass: every account drained to its final block, ``settings.concurrency`` at a time.

    Raises ``errors.SchemaError`` (schema outdated) or
    ``errors.DatabaseUnavailableError`` before any API call (the CLI's exit 3).
    ``api`` and ``connect`` replace the client and the connections built from
    ``settings`` (tests inject theirs).
    """
    with contextlib.ExitStack() as stack:
        if connect is None:
            connect = stack.enter_context(pooled(settings))
        names = list(accounts) if accounts is not None else list(settings.account_names)
        with db.session(connect) as conn:
            migrations.check_schema(conn)
            if api is None and names:
                stack.enter_context(_fingerprint_ahead(settings))
            if metrics is not None:
                status.announce(conn, names, metrics.account_configured)
        if api is None:
            api, _ = stack.enter_context(
                api_client(settings, connect, metrics=metrics, stop_event=stop_event)
            )
        results = sync.run_accounts(
            api,
            names,
            store.PostgresStore(connect),
            concurrency=settings.concurrency,
            budget_seconds=settings.run_budget_seconds,
            stop_event=stop_event,
            metrics=metrics,
            clock=clock,
            max_blocks=settings.max_blocks_per_run,
            lock_report_after=sync.lock_report_after(settings.interval_seconds),
        )
    passed = outcomes.PassResult(results)
    _log.info("sync_pass", **passed.summary())
    return passed


@contextlib.contextmanager
def _fingerprint_ahead(settings: config.Settings) -> Iterator[None]:
    """Compute the credentials' fingerprint (a deliberately slow hash, ~50 ms of CPU that leaves
    the GIL free) on a thread while the pass starts up and its OAuth token request is in flight:
    the session login needs it and otherwise computed it on the critical path of every account.
    Local work only: nothing is sent and the login guard sees nothing; the login itself still
    happens (or not) exactly as before, and reads the credentials again."""

    def compute() -> None:
        # Whatever fails here fails again, and is reported, where the login needs the value.
        with contextlib.suppress(Exception):
            current_fingerprint(settings)

    thread = threading.Thread(target=compute, name="fingerprint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def run_pass(
    settings: config.Settings, *, accounts: Sequence[str] | None = None, progress: TextIO | None = None
) -> outcomes.PassResult:
    """The ``once`` command's pass: ``sync_once`` until done or SIGTERM/SIGINT (the stop event
    ends it between blocks), its progress shown on ``progress`` (a terminal), its metrics written
    to ``SYNC_METRICS_TEXTFILE`` and pushed to ``SYNC_METRICS_PUSHGATEWAY`` when set."""
    stop = threading.Event()
    exported = settings.metrics_textfile is not None or settings.metrics_pushgateway is not None
    pass_metrics: metrics.Metrics | None = None
    if progress is not None or exported:
        from sync_worker import metrics as metrics_mod  # noqa: PLC0415  # see the imports above

        pass_metrics = (
            metrics_mod.ProgressMetrics(progress, one_pass=True)
            if progress is not None
            else metrics_mod.Metrics(one_pass=True)
        )
    with signals.stop_on_signals(stop):
        result = sync_once(settings, accounts=accounts, stop_event=stop, metrics=pass_metrics)
    if exported and pass_metrics is not None:
        _export_pass_metrics(settings, pass_metrics)
    return result


def _export_pass_metrics(settings: config.Settings, pass_metrics: metrics.Metrics) -> None:
    """The pass's metrics to the textfile and/or the Pushgateway. A failure is logged, not fatal:
    the messages are stored, and the alert on the age of the last pass notices the silence."""
    if settings.metrics_textfile is not None:
        try:
            pass_metrics.write_textfile(settings.metrics_textfile)
        except errors.SyncWorkerError as exc:
            _log.error("metrics_textfile_failed", error=str(exc))
    if settings.metrics_pushgateway is not None:
        try:
            pass_metrics.push(settings.metrics_pushgateway, job=PUSH_JOB, instance=socket.gethostname())
        except errors.SyncWorkerError as exc:
            _log.error("metrics_push_failed", error=str(exc))


def run_daemon(
    settings: config.Settings,
    *,
    stop_event: threading.Event | None = None,
    metrics: sync.MetricsSink | None = None,
    api: sync.HistoryApi | None = None,
    connect: db.ConnectionFactory | None = None,
    install_signal_handlers: bool = True,
    liveness: probes.Liveness | None = None,
) -> int:
    """The daemon until ``stop_event`` is set (or SIGTERM/SIGINT): ``scheduler.serve`` with its
    client, guard and connections built here, and, with ``SYNC_METRICS_PORT``, ``health_server``
    (ready: the database, the login guard, the claims; live: ``liveness``).

    The database and its schema are checked first (exit 3) before anything is served.
    ``metrics``: a ``metrics.Metrics`` is made when none is given and a port is set; a
    ``metrics.Metrics`` also shows ``liveness`` (made here when not given) as
    ``seconds_since_last_claim_poll`` and ``run_overdue_seconds``, and the login guard as read
    every ``scheduler.GUARD_OBSERVE_SECONDS``. ``api`` and ``connect`` replace the client and the
    connections built from ``settings`` (tests inject theirs). Returns ``scheduler.serve``'s code.
    """
    from sync_worker import metrics as metrics_mod  # noqa: PLC0415  # see the imports above
    from sync_worker import scheduler  # noqa: PLC0415  # see the imports above

    stop = stop_event if stop_event is not None else threading.Event()
    if liveness is None:
        liveness = probes.Liveness()
    if metrics is None and settings.metrics_port is not None:
        metrics = metrics_mod.Metrics()
    if isinstance(metrics, metrics_mod.Metrics):
        metrics.watch_claim_poll(liveness.seconds_since_poll)
        metrics.watch_overdue_runs(liveness.overdue_runs)
    with contextlib.ExitStack() as stack:
        if connect is None:
            connect = stack.enter_context(pooled(settings))
        with db.session(connect) as conn:
            # Fail fast (exit 3), before the health server answers anything.
            migrations.check_schema(conn)
        observe_guard: Callable[[], object] | None = None
        if api is None:
            api, the_guard = stack.enter_context(
                api_client(settings, connect, metrics=metrics, stop_event=stop)
            )
            if metrics is not None:
                observe_guard = guard_observer(settings, the_guard)
        if isinstance(metrics, metrics_mod.Metrics):
            # Each readiness probe also refreshes the tripped gauge from the database. Its own
            # connections, not the pool's: a probe never waits for a slot of the account runs.
            probe_guard = login_guard(settings, connector(settings), on_state=metrics.login_guard)
            ready = [
                ("login_guard", guard_ready(guard_observer(settings, probe_guard))),
                ("claims", liveness.check_claims),
            ]
            stack.enter_context(health_server(settings, metrics, live=liveness.check, ready=ready))
        # Leaving this block stops the health server, then closes the client, after the scheduler stopped.
        return scheduler.serve(
            settings,
            api,
            connect,
            stop_event=stop,
            metrics=metrics,
            observe_guard=observe_guard,
            install_signal_handlers=install_signal_handlers,
            liveness=liveness,
        )


def receive(
    settings: config.Settings,
    *,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
) -> int:
    """The callback receiver of ``SYNC_ACCOUNTS`` until ``stop_event`` is set (or SIGTERM/SIGINT),
    with ``health_server`` (live: the receiver; ready: the database). The database is checked first
    (exit 3)."""
    from sync_worker import callback_metrics  # noqa: PLC0415  # see the imports above
    from sync_worker import metrics as metrics_mod  # noqa: PLC0415  # see the imports above

    database_ready(settings)
    m = metrics_mod.Metrics()
    the_receiver = callback_receiver(
        settings, connector(settings), callback_metrics.CallbackMetrics(m.registry)
    )
    stop = stop_event if stop_event is not None else threading.Event()
    with (
        signals.stop_on_signals(stop, enabled=install_signal_handlers),
        the_receiver,
        health_server(settings, m, live=the_receiver.live),
    ):
        stop.wait()
    _log.info("callback_receiver_stopped")
    return exitcodes.OK


def callback_receiver(
    settings: config.Settings,
    connect: db.ConnectionFactory,
    metrics: callback_metrics.CallbackMetrics,
) -> receiver.Receiver:
    """The callback receiver of ``SYNC_ACCOUNTS`` (not started)."""
    from sync_worker import callbacks, receiver  # noqa: PLC0415  # see the imports above

    if not settings.callback_username or not settings.callback_password:
        raise errors.ConfigError(
            "SYNC_CALLBACK_USERNAME and SYNC_CALLBACK_PASSWORD (or SYNC_CALLBACK_PASSWORD_FILE) are "
            "required: ThingSpace puts them in every callback body"
        )
    credentials = callbacks.ListenerCredentials(
        settings.callback_username, settings.callback_password, settings.callback_previous_password
    )
    return receiver.Receiver(
        receiver.ReceiverConfig(
            accounts=frozenset(settings.account_names),
            credentials=credentials,
            host=settings.callback_host,
            port=settings.callback_port,
            max_body_bytes=settings.callback_max_body_bytes,
            allowed_sources=settings.callback_allowed_sources,
            trusted_proxies=settings.callback_trusted_proxies,
        ),
        connect,
        metrics,
    )


def listener_url(settings: config.Settings, account: str) -> str | None:
    """The URL this deployment registers for ``account`` (None without ``SYNC_CALLBACK_URL``)."""
    if not settings.callback_url:
        return None
    from sync_worker import receiver  # noqa: PLC0415  # see the imports above

    return f"{settings.callback_url}{receiver.PATH_PREFIX}{urllib.parse.quote(account, safe='')}"
