"""The callback receiver's database connections: psycopg_pool with a hard maximum and a short
acquire timeout (``CallbackPool``), and ``Busy``, what the receiver answers 503 + Retry-After for.

A push burst must never take more than ``size`` of the server's connections (the daemons' runs,
claims and login guard share ``max_connections``), nor wait long: the platform sends a second,
concurrent delivery when an answer takes more than about 4 s, so a callback that gets no
connection within ``acquire_timeout`` is answered 503 at once. Every session has
``lock_timeout`` and ``statement_timeout`` set (a maintenance lock or a retention drop on the
history makes the callback statement fail fast instead of piling up behind it). A connection an
error happened on (``db.retire``) is closed, not given back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool

from sync_worker import db, queries


class Busy(Exception):
    """No connection, or the database waited on a lock or ran too long: answer 503 + Retry-After.

    ``kind`` labels ``callback_store_failures``: ``busy`` (every connection in use, a lock or the
    statement timeout) or ``database_unavailable`` (no connection can be made).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class CallbackPool:
    """At most ``size`` connections made by ``connect``; ``connection()`` waits ``acquire_timeout``."""

    def __init__(
        self,
        connect: db.ConnectionFactory,
        *,
        size: int,
        acquire_timeout: float,
        lock_timeout: float,
        statement_timeout: float,
    ) -> None:
        self._acquire_timeout = acquire_timeout
        timeouts = {
            "lock_timeout": f"{int(lock_timeout * 1000)}ms",
            "statement_timeout": f"{int(statement_timeout * 1000)}ms",
        }

        def configure(conn: db.Connection) -> None:
            conn.execute(queries.get("callback_session_timeouts"), timeouts)

        # Whether the latest attempt to open a connection failed: tells a database that cannot
        # be reached from one whose connections are all in use.
        self.connect_failing = False

        def connect_noting() -> db.Connection:
            try:
                conn = connect()
            except Exception:
                self.connect_failing = True
                raise
            self.connect_failing = False
            return conn

        self._pool = psycopg_pool.ConnectionPool(
            connection_class=_made_by(connect_noting),
            min_size=1,
            max_size=size,
            open=False,
            configure=configure,
            check=psycopg_pool.ConnectionPool.check_connection,
            name="callback-receiver",
            timeout=acquire_timeout,
            max_lifetime=db.MAX_CONNECTION_AGE_SECONDS,
            num_workers=2,
        )

    def open(self) -> None:
        # Not waiting: a receiver whose database is down starts and answers 503 until it is back.
        self._pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self) -> Iterator[db.Connection]:
        try:
            conn = self._pool.getconn(timeout=self._acquire_timeout)
        except psycopg_pool.PoolTimeout:
            kind = "database_unavailable" if self.connect_failing else "busy"
            raise Busy(kind, f"no database connection within {self._acquire_timeout:g} s") from None
        try:
            yield conn
        finally:
            if not db.usable(conn):
                with contextlib.suppress(Exception):
                    conn.close()
            self._pool.putconn(conn)

    def close(self) -> None:
        self._pool.close(timeout=5)


def _made_by(connect: db.ConnectionFactory) -> type[db.Connection]:
    """A connection class for psycopg_pool whose ``connect`` is ``connect`` (``db.connector``'s
    liveness settings and secret-free errors, the caller's application name)."""

    class _Made(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            return connect()

    return _Made
