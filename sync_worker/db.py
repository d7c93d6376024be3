"""Postgres connections: the one way every part of the worker connects.

Connections are in autocommit mode, so every ``store`` write is exactly the
transaction it opens and advisory locks are session-level. A connection that
cannot be made raises ``errors.DatabaseUnavailableError`` naming what failed,
never the password. Session-level state is why a pooler that hands the server
session to other clients between transactions (PgBouncer's transaction or
statement pooling) is refused on a factory's first connection
(``check_session_pooling``, ``errors.ConfigError``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import psycopg
import psycopg.errors
import psycopg.rows
import psycopg_pool
from psycopg import conninfo, pq
from psycopg import sql as pg_sql

from sync_worker import errors, queries, secret

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[tuple[Any, ...]]
ConnectionFactory = Callable[[], Connection]
_T = TypeVar("_T")

# How long a kept connection may serve. A session keeps what it was opened with: one opened while
# the database was read-only (a failover, a standby being promoted) stays read-only after the
# primary is writable again, one opened before a configuration change keeps the old values. Errors
# retire such a connection as soon as it fails; the age limit also retires those that never fail.
MAX_CONNECTION_AGE_SECONDS: Final = 600.0

# A replica cut off from Postgres must lose its account locks within about a minute, so both
# ends probe the TCP connection: libpq here, and the server (per session GUCs in `options`),
# which is what actually drops the session and its advisory locks. Values already in the URL win.
_CLIENT_LIVENESS: Final = {
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "4",
    "tcp_user_timeout": "45000",
}
_SERVER_LIVENESS: Final = " ".join(
    f"-c {name}={value}"
    for name, value in (
        ("tcp_keepalives_idle", 15),
        ("tcp_keepalives_interval", 5),
        ("tcp_keepalives_count", 4),
        ("tcp_user_timeout", 45000),
    )
)


def with_liveness(dsn: str) -> str:
    """``dsn`` plus TCP keepalive and user-timeout settings on both ends (unless it sets its own)."""
    params = conninfo.conninfo_to_dict(dsn)
    for key, value in _CLIENT_LIVENESS.items():
        params.setdefault(key, value)
    options = str(params.get("options") or "")
    if "tcp_keepalives_idle" not in options:
        params["options"] = f"{options} {_SERVER_LIVENESS}".strip()
    return conninfo.make_conninfo("", **params)


def describe(dsn: str) -> str:
    """Which database ``dsn`` reaches, as libpq resolves it: ``host=H port=P dbname=D user=U``.

    What ``dsn`` leaves out comes from the PG* variables and libpq's defaults (the local socket,
    the OS user, a database named like the user), which is how an unset ``SYNC_DATABASE_URL``
    ends up on an unexpected database: an empty ``dsn`` says so. Never the password.
    """
    try:
        given = {o.keyword: o.val for o in pq.Conninfo.parse(dsn.encode()) if o.val}
    except psycopg.Error:
        return "(an unparseable connection string)"
    defaults = {o.keyword: o.val for o in pq.Conninfo.get_defaults() if o.val}

    def value(key: bytes) -> str | None:
        found = given.get(key) or defaults.get(key)
        return found.decode(errors="replace") if found else None

    user = value(b"user")
    shown = {
        "host": value(b"host") or value(b"hostaddr") or "(local socket)",
        "port": value(b"port"),
        "dbname": value(b"dbname") or user,
        "user": user,
    }
    text = " ".join(f"{k}={v}" for k, v in shown.items() if v)
    if not dsn.strip():
        return f"{text} (SYNC_DATABASE_URL is not set: chosen by libpq's PG* variables and defaults)"
    return text


def connector(
    dsn: str,
    *,
    application_name: str = "sync-worker",
    failure: str = "cannot connect to the database",
    connect_timeout: int = 10,
) -> ConnectionFactory:
    """A factory of autocommit connections to ``dsn``, with TCP liveness probes on both ends.

    A failure raises ``errors.DatabaseUnavailableError("<failure>: <reason>")``; the reason is
    psycopg's message with every known secret scrubbed (libpq names host and user, never the
    password, but a password given in a URL is registered as a secret all the same).
    """

    def open_one() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                with_liveness(dsn),
                autocommit=True,
                application_name=application_name,
                connect_timeout=connect_timeout,
            )
        except psycopg.Error as exc:
            raise errors.DatabaseUnavailableError(f"{failure}: {_reason(exc)}") from exc

    # The pooling check runs on the factory's first connection only (once per process and URL);
    # a refusal is kept, so every later connection is refused the same way.
    checked = False
    refusal: errors.ConfigError | None = None
    check_lock = threading.Lock()

    def connect() -> psycopg.Connection[Any]:
        nonlocal checked, refusal
        conn = open_one()
        if checked and refusal is None:
            return conn
        with check_lock:
            try:
                if refusal is None and not checked:
                    check_session_pooling(conn, open_one, failure=failure)
                    checked = True
            except errors.ConfigError as exc:
                refusal = exc
            except BaseException:
                _close(conn)
                raise
            if refusal is not None:
                _close(conn)
                raise refusal
        return conn

    return connect


def _reason(exc: psycopg.Error) -> str:
    return secret.scrub(str(exc).strip()) or type(exc).__name__


# How many times the pooling check looks for another client on this connection's server session.
_POOLING_ROUNDS: Final = 2


def check_session_pooling(conn: Connection, open_other: ConnectionFactory, *, failure: str) -> None:
    """Raise ``errors.ConfigError`` when ``conn`` leads to a pooler that does not keep one server
    session per client connection (PgBouncer's transaction or statement pooling).

    The worker holds session state across transactions: each account's advisory lock (taken in
    one transaction, held while the run commits its blocks in others, released at the end), the
    migrations' and retention's locks, and psycopg's prepared statements. Under transaction
    pooling another client gets the server session between two transactions: the account lock
    would silently stop excluding other replicas (two replicas drain one account), and prepared
    statements collide (``DuplicatePreparedStatement``).

    Postgres itself answers ``pg_backend_pid()`` with the process ID its BackendKeyData announced;
    PgBouncer (every version) gives each client a random cancel key of its own, so a difference
    means a pooler sits between, and only then is the mode probed, with a second client: under
    session pooling this connection's server process never changes and no other client ever runs
    on it; under transaction pooling, PgBouncer reuses idle server connections most recently used
    first (or, with ``server_round_robin``, in turn), so within a few statements either this
    connection moves to another server process or the other client lands on this one. Statement
    pooling refuses the other client's transaction block outright.
    """
    try:
        own = _server_pid(conn)
        if own == conn.info.backend_pid:
            return  # no pooler: the server's own key
        seen = {own}
        with contextlib.closing(open_other()) as other:
            for _ in range(_POOLING_ROUNDS):
                seen.add(_server_pid(conn))
                seen.add(_server_pid(conn))
                if len(seen) > 1:
                    raise _pooling_refusal(failure, "transaction")
                with other.transaction():
                    theirs = _server_pid(other)
                    if theirs in seen:
                        raise _pooling_refusal(failure, "transaction")
                    # While the other client holds its server, this one must still be on its own.
                    seen.add(_server_pid(conn))
                if len(seen) > 1:
                    raise _pooling_refusal(failure, "transaction")
    except psycopg.Error as exc:
        if "statement pool" in str(exc):
            raise _pooling_refusal(failure, "statement") from exc
        raise errors.DatabaseUnavailableError(
            f"{failure}: checking the connection pooling failed: {_reason(exc)}"
        ) from exc


def _server_pid(conn: Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0]) if row is not None else 0


def _pooling_refusal(failure: str, mode: str) -> errors.ConfigError:
    # The remedy first: one-line logs and readiness probes may cut a long message short.
    return errors.ConfigError(
        f"{failure}: refused: use session pooling (PgBouncer: pool_mode = session) or connect to "
        f"Postgres directly; this URL leads to a pooler in {mode} pooling mode (PgBouncer's "
        f"pool_mode = {mode}), which hands this connection's server session to other clients between "
        "its transactions: the per-account advisory locks would stop excluding other replicas and "
        'prepared statements would collide (docs/operations.md, "PgBouncer")'
    )


def create_database(dsn: str, *, failure: str, connect_timeout: int = 10) -> str | None:
    """Create the database ``dsn`` names unless it exists, connected to the server's maintenance
    database (``postgres``) with the same host, user and password. Returns the name created, or
    None when it existed. The user needs CREATEDB (or to be a superuser)."""
    name = conninfo.conninfo_to_dict(dsn).get("dbname") or os.environ.get("PGDATABASE")
    if not name:
        raise errors.ConfigError(f"{failure}: the connection string names no database to create")
    maintenance = conninfo.make_conninfo(dsn, dbname="postgres")
    with connector(maintenance, failure=failure, connect_timeout=connect_timeout)() as conn:
        try:
            row = conn.execute(queries.get("database_exists"), {"name": name}).fetchone()
            if row is not None and row[0]:
                return None
            # CREATE DATABASE takes no bind parameters: the name goes in as a quoted identifier.
            conn.execute(pg_sql.SQL(queries.get("create_database")).format(name=pg_sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:
            return None  # created by a concurrent migrate
        except psycopg.Error as exc:
            reason = secret.scrub(str(exc).strip()) or type(exc).__name__
            raise errors.DatabaseUnavailableError(
                f"{failure}: cannot create database {name}: {reason}"
            ) from exc
    return str(name)


# Connections a database error happened on (``transaction`` adds them): never used again for new
# work. Weak, so a closed and dropped connection leaves by itself.
_failed: weakref.WeakSet[Connection] = weakref.WeakSet()
_failed_lock = threading.Lock()


def retire(conn: Connection) -> None:
    """Mark ``conn`` as not to be reused: its current user may finish with it, nobody takes it next."""
    with _failed_lock:
        _failed.add(conn)


def usable(conn: Connection) -> bool:
    """Whether ``conn`` may carry new work: open, outside a transaction, and no error happened on it.

    Any error retires a connection, not only a lost one: the session may be what is wrong (opened
    read-only during a failover, in a state a bug left behind), and a new session is cheap.
    """
    with _failed_lock:
        failed = conn in _failed
    return (
        not failed and not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


@contextlib.contextmanager
def session(connect: ConnectionFactory) -> Iterator[Connection]:
    """A connection from ``connect``, closed on exit (given back instead when ``connect`` is a ``Pool``).

    Closing a connection the server already dropped can fail; that failure is no news (the
    work on it failed already, with its own error) and the server has released the session.
    """
    with _checkout(connect) as (conn, _):
        yield conn


@contextlib.contextmanager
def started(connect: ConnectionFactory, first: Callable[[Connection], _T]) -> Iterator[tuple[Connection, _T]]:
    """A ``session`` whose first statement is ``first(conn)``; yields the connection and its result.

    A kept connection may have died or gone stale while idle (a database restart, a failover): when
    a reused one fails ``first`` with a project error, it is retired and ``first`` runs once more on
    a new connection (not another kept one), as nothing of it can have happened on the dead one. A
    new connection's failure is raised. Errors of the work inside the ``with`` are never retried here.
    """
    for attempt in range(2):
        with contextlib.ExitStack() as stack:
            # The retry never takes another kept connection: after a restart they are all dead.
            conn, reused = stack.enter_context(_checkout(connect, fresh=attempt > 0))
            try:
                value = first(conn)
            except errors.SyncWorkerError:
                retire(conn)
                if reused and attempt == 0:
                    continue
                raise
            # The ExitStack gives the connection back (or closes it) after the caller's work.
            yield conn, value
            return
    raise AssertionError("unreachable")  # pragma: no cover


def ping(conn: Connection) -> None:
    """One round trip that proves ``conn`` works (a ``started`` first statement for work that has none)."""
    with transaction(conn, single_statement=True) as cur:
        cur.execute("SELECT 1")


@contextlib.contextmanager
def _checkout(connect: ConnectionFactory, *, fresh: bool = False) -> Iterator[tuple[Connection, bool]]:
    """A connection and whether it was reused from a ``Pool`` (a reused one may have died since);
    ``fresh``: a new one even when the pool keeps one."""
    if isinstance(connect, Pool):
        with connect.checkout(fresh=fresh) as pooled:
            yield pooled
        return
    conn = connect()
    try:
        yield conn, False
    finally:
        _unlock_and_close(conn)


def _close(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


def _unlock_and_close(conn: Connection) -> None:
    """Close ``conn``, its session-level advisory locks released first where it still can: the
    server ends a closed session (and frees its locks) a moment after ``close`` returns, and the
    next run of the account must not find its lock still held.

    A retired connection (an error happened on it) is left inside an open transaction: Postgres
    rolls it back as the session ends, and a pooler in session mode (PgBouncer) then closes the
    server session instead of resetting it for its next client. A session opened while the
    database was read-only stays read-only after it is writable again (``RESET ALL`` keeps the
    value it started with), so handing it on would fail every later connection the same way.
    """
    if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")
            with _failed_lock:
                failed = conn in _failed
            if failed:
                conn.execute("BEGIN")
    _close(conn)


# How long a checkout waits while every connection is lent (the daemon's pool is sized never to).
POOL_TIMEOUT_SECONDS: Final = 30.0
# How often a waiting checkout looks whether an attempt to connect failed (psycopg_pool connects on
# its own threads and tells a waiting client nothing but a timeout).
_WAIT_SLICE_SECONDS: Final = 0.1


class Pool(psycopg_pool.ConnectionPool[Connection]):
    """psycopg_pool's pool of ``connect``'s connections, configured for the worker (the one place);
    ``session`` and ``started`` borrow from it; calling it gives a new connection the caller closes.

    A new server session costs more server CPU than a short account run (~8 ms measured, against ~4 ms
    for a block commit), so runs reuse them. At most ``max_size`` connections, opened when needed,
    closed after ``max_idle`` s unused. A connection goes back only healthy and idle (``usable``: no
    error of any kind happened on it) and after ``pg_advisory_unlock_all()``, before the borrower goes
    on (psycopg_pool's ``reset`` runs later, on its own thread): a lock left on an idle connection
    would keep its account from ever being synced. Any other is closed (``_unlock_and_close``) and the
    pool opens another. A kept one is lent again only while younger than ``max_age`` s (by ``clock``)
    and usable (the ``check``: local state, no round trip; one that died while idle fails its first
    statement and ``started`` retries once on a new one, where psycopg_pool's round-trip check backs off
    1, 2, 4... s between the dead connections of a restarted server).
    """

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        max_size: int,
        min_size: int = 0,
        name: str = "sync-worker",
        timeout: float = POOL_TIMEOUT_SECONDS,
        max_age: float = MAX_CONNECTION_AGE_SECONDS,
        max_idle: float = MAX_CONNECTION_AGE_SECONDS,
        configure: Callable[[Connection], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        open: bool = True,
    ) -> None:
        self._connect_new = connect
        self._configure_each = configure
        self._max_age = max_age
        self._clock = clock
        # When each was made: by ``clock`` (its age), and monotonic (made before a checkout: kept idle).
        self._born: weakref.WeakKeyDictionary[Connection, tuple[float, float]] = weakref.WeakKeyDictionary()
        self._state = threading.Lock()
        self._failures = 0
        self._failure: errors.SyncWorkerError | None = None
        logging.getLogger("psycopg.pool").addFilter(_POOL_LOG_FILTER)
        super().__init__(
            connection_class=_made_by(self._open_new),
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=self._configure_new,
            check=self._still_good,
            name=name,
            timeout=timeout,
            max_lifetime=max_age,
            max_idle=max_idle,
            # One attempt (and psycopg_pool's one immediate retry) per need: a checkout waiting for a
            # connection gets the failure at once (``_lend``), and the next one tries again.
            reconnect_timeout=0.0,
            num_workers=2,
        )
        if open:
            self.open()

    def __call__(self) -> Connection:
        return self._connect_new()

    @property
    def connect_failing(self) -> bool:
        """Whether the latest attempt to open a connection failed (the database cannot be reached)."""
        with self._state:
            return self._failure is not None

    @contextlib.contextmanager
    def checkout(self, *, fresh: bool = False) -> Iterator[tuple[Connection, bool]]:
        """A connection and whether it was kept idle before (``fresh``: a new one: the kept ones are
        closed first, as whatever failed a kept one may have failed them all)."""
        if fresh:
            self.drain()
        began = time.monotonic()
        conn = self._lend()
        with self._state:
            reused = self._born.get(conn, (0.0, 0.0))[1] < began
        ok = False
        try:
            yield conn, reused
            ok = True
        finally:
            self._give_back(conn, reusable=ok)

    def _lend(self) -> Connection:
        with self._state:
            failures = self._failures
        deadline = time.monotonic() + self.timeout
        while True:
            wait = min(_WAIT_SLICE_SECONDS, deadline - time.monotonic())
            try:
                return self.getconn(timeout=max(wait, 0.001))
            except psycopg_pool.PoolTimeout:
                pass
            except psycopg_pool.PoolClosed as exc:
                raise errors.DatabaseUnavailableError(f"the {self.name} connection pool is closed") from exc
            with self._state:
                failure = self._failure if self._failures != failures else None
            if failure is not None:
                # What the attempt made for this checkout said (the URL, the reason, a refused pooler).
                raise copy.copy(failure) from failure
            if time.monotonic() >= deadline:
                raise errors.DatabaseUnavailableError(
                    f"no database connection free within {self.timeout:g} s "
                    f"(the {self.name} pool holds at most {self.max_size})"
                )

    def _give_back(self, conn: Connection, *, reusable: bool) -> None:
        if reusable and usable(conn):
            try:
                conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                retire(conn)
        if not (reusable and usable(conn)):
            _unlock_and_close(conn)
        # A closed connection is discarded by the pool, which opens another in its place.
        self.putconn(conn)

    def _open_new(self) -> Connection:
        try:
            conn = self._connect_new()
        except errors.SyncWorkerError as exc:  # the connector raises nothing else
            with self._state:
                self._failures += 1
                self._failure = exc
            raise
        with self._state:
            self._failure = None
        return conn

    def _configure_new(self, conn: Connection) -> None:
        with self._state:
            self._born[conn] = (self._clock(), time.monotonic())
        if self._configure_each is not None:
            self._configure_each(conn)

    def _still_good(self, conn: Connection) -> None:
        with self._state:
            born = self._born.get(conn)
        if born is not None and self._clock() - born[0] < self._max_age and usable(conn):
            return
        _close(conn)  # idle in the pool (no transaction, no lock); the pool replaces it
        raise errors.DatabaseUnavailableError("a kept connection reached its maximum age or failed")


def _made_by(connect: ConnectionFactory) -> type[Connection]:
    """A connection class whose ``connect`` is ``connect`` (``connector``'s settings, check, errors)."""

    class _Made(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            return connect()

    return _Made


class _PoolLogFilter(logging.Filter):
    """Drops psycopg_pool's warnings about what ``Pool`` does on purpose: closing a retired connection
    (its error is reported where it happened), giving up after one attempt (whose failure is logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("discarding closed connection", "reconnection attempt"))


_POOL_LOG_FILTER: Final = _PoolLogFilter()


@contextlib.contextmanager
def transaction(
    conn: Connection, *, single_statement: bool = False
) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
    """One transaction of its own on ``conn`` (refusing to join the caller's), yielding a cursor;
    driver errors leave as ``errors.DatabaseUnavailableError`` (the connection) or
    ``errors.StoreError`` (anything else). ``single_statement`` on an autocommit connection
    skips BEGIN/COMMIT: one statement is already atomic."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.closed:
        raise errors.StoreError(
            "database functions run their own transaction; the connection is already inside one"
        )
    try:
        if single_statement and conn.autocommit:
            # One statement in autocommit is already one atomic transaction; an
            # explicit BEGIN/COMMIT would add two round trips per block.
            with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
                yield cur
            return
        with conn.transaction(), conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
            yield cur
    except psycopg.OperationalError as exc:
        retire(conn)
        raise errors.DatabaseUnavailableError(f"database unavailable ({type(exc).__name__}: {exc})") from exc
    except psycopg.Error as exc:
        retire(conn)
        raise errors.StoreError(f"database error ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """``conn.pipeline()``, minus psycopg's warning about a pipeline on a lost connection.

    When a statement inside fails because the connection is gone (a pooled connection whose
    server restarted or whose backend was killed), leaving the pipeline syncs on the dead socket
    and fails the same way; psycopg logs that second failure as a warning ("error ignored
    terminating <psycopg.Pipeline [BAD]>") beside the error the caller gets anyway, one per lost
    connection. Here the pipeline is left without it, and only the statement's error is raised.
    Any other failure leaves through psycopg's own exit, unchanged.
    """
    manager = conn.pipeline()
    manager.__enter__()
    try:
        yield
    except BaseException as exc:
        if conn.broken:
            # Leaving cleans up psycopg's pipeline state; its sync fails on the dead socket.
            with contextlib.suppress(psycopg.Error):
                manager.__exit__(None, None, None)
            raise
        if not manager.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        manager.__exit__(None, None, None)
