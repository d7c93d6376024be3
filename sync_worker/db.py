"""Postgres connections: the one way every part of the worker connects.

Connections are in autocommit mode, so every ``store`` write is exactly the
transaction it opens and advisory locks are session-level. A connection that
cannot be made raises ``errors.DatabaseUnavailableError`` naming what failed,
never the password.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import psycopg
import psycopg.errors
import psycopg.rows
from psycopg import conninfo
from psycopg import sql as pg_sql

from sync_worker import errors, queries, secret

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[tuple[Any, ...]]
ConnectionFactory = Callable[[], Connection]

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

    def connect() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                with_liveness(dsn),
                autocommit=True,
                application_name=application_name,
                connect_timeout=connect_timeout,
            )
        except psycopg.Error as exc:
            reason = secret.scrub(str(exc).strip()) or type(exc).__name__
            raise errors.DatabaseUnavailableError(f"{failure}: {reason}") from exc

    return connect


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


@contextlib.contextmanager
def session(connect: ConnectionFactory) -> Iterator[Connection]:
    """A connection from ``connect``, closed on exit (given back instead when ``connect`` is a ``Pool``).

    Closing a connection the server already dropped can fail; that failure is no news (the
    work on it failed already, with its own error) and the server has released the session.
    """
    if isinstance(connect, Pool):
        with connect.session() as pooled:
            yield pooled
        return
    conn = connect()
    try:
        yield conn
    finally:
        _close(conn)


def _close(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


class Pool:
    """Keeps up to ``keep`` idle connections of ``connect`` for ``session`` to reuse.

    A new server session costs more than the work of a short account run (a backend process
    and cold catalog caches: ~8 ms of server CPU measured, against ~4 ms for a block commit),
    so runs reuse them. Calling the pool itself still gives a fresh connection the caller
    closes. A connection is given back only when it is healthy and idle, and with every
    session-level advisory lock released: a lock left behind on an idle connection would keep
    its account from ever being synced.
    """

    def __init__(self, connect: ConnectionFactory, keep: int) -> None:
        self._connect = connect
        self._keep = keep
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self) -> Connection:
        return self._connect()

    @contextlib.contextmanager
    def session(self) -> Iterator[Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        reusable = False
        try:
            yield conn
            reusable = True
        finally:
            self._give_back(conn, reusable=reusable)

    def _give_back(self, conn: Connection, *, reusable: bool) -> None:
        if reusable and not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                reusable = False
        else:
            reusable = False
        if reusable:
            with self._lock:
                if not self._closed and len(self._idle) < self._keep:
                    self._idle.append(conn)
                    return
        _close(conn)

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


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
        raise errors.DatabaseUnavailableError(f"database unavailable ({type(exc).__name__}: {exc})") from exc
    except psycopg.Error as exc:
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
