"""Wiring: settings -> connections -> login guard -> client -> sync or scheduler.

Every entry point (the CLI, the demo, tests, benchmarks) builds the worker's
parts here, so each part is built one way: ``connector`` for Postgres,
``login_guard`` and ``api_client`` for ThingSpace, ``sync_once`` for one pass
and ``run_daemon`` for the daemon. The modules below know nothing of
``config.Settings`` beyond the values handed to them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from sync_worker import (
    client,
    config,
    db,
    errors,
    guard,
    migrations,
    retry,
    status,
    sync,
)

if TYPE_CHECKING:
    from sync_worker import callback_metrics, receiver, scheduler

# The daemon's scheduler (apscheduler) and the callback receiver are imported where they are
# built: `once`, which needs neither, starts without their import cost.

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
) -> sync.PassResult:
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
                _announce(conn, names, metrics)
        if api is None:
            api, _ = stack.enter_context(
                api_client(settings, connect, metrics=metrics, stop_event=stop_event)
            )
        results = sync.run_accounts(
            api,
            names,
            connect,
            concurrency=settings.concurrency,
            budget_seconds=settings.run_budget_seconds,
            stop_event=stop_event,
            metrics=metrics,
            clock=clock,
            max_blocks=settings.max_blocks_per_run,
            lock_report_after=sync.lock_report_after(settings.interval_seconds),
        )
    passed = sync.PassResult(results)
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


def _announce(conn: db.Connection, names: Sequence[str], metrics: sync.MetricsSink) -> None:
    """Every account of the pass gets its series, with its last success from the database, so a
    pass's written metrics carry the real last success even when this pass failed."""
    last = {
        s.account_name: s.last_success_at.timestamp()
        for s in status.account_status(conn)
        if s.last_success_at is not None
    }
    for name in names:
        metrics.account_configured(name, last.get(name))


def run_daemon(
    settings: config.Settings,
    *,
    stop_event: threading.Event | None = None,
    metrics: sync.MetricsSink | None = None,
    api: sync.HistoryApi | None = None,
    connect: db.ConnectionFactory | None = None,
    install_signal_handlers: bool = True,
    liveness: scheduler.Liveness | None = None,
) -> int:
    """The daemon (``scheduler.run_daemon``) with its client, guard and connections built here.

    ``liveness`` (made here when not given) also feeds ``seconds_since_last_claim_poll`` and
    ``run_overdue_seconds`` when ``metrics`` is a ``metrics.Metrics``.
    """
    from sync_worker import metrics as metrics_mod  # noqa: PLC0415  # see the imports above
    from sync_worker import scheduler  # noqa: PLC0415  # see the imports above

    stop = stop_event if stop_event is not None else threading.Event()
    if liveness is None:
        liveness = scheduler.Liveness()
    if isinstance(metrics, metrics_mod.Metrics):
        metrics.watch_claim_poll(liveness.seconds_since_poll)
        metrics.watch_overdue_runs(liveness.overdue_runs)
    with contextlib.ExitStack() as stack:
        if connect is None:
            connect = stack.enter_context(pooled(settings))
        observe_guard: Callable[[], object] | None = None
        if api is None:
            api, the_guard = stack.enter_context(
                api_client(settings, connect, metrics=metrics, stop_event=stop)
            )
            if metrics is not None:

                def observe_guard() -> object:
                    return the_guard.observe(current_fingerprint(settings))

        # Leaving this block closes the client after the scheduler stopped.
        return scheduler.run_daemon(
            settings,
            api,
            connect,
            stop_event=stop,
            metrics=metrics,
            observe_guard=observe_guard,
            install_signal_handlers=install_signal_handlers,
            liveness=liveness,
        )


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
