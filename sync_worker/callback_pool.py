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

from sync_worker import db, errors, queries


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

        # db.Pool: psycopg_pool configured as every pool of the worker is (errors retire a
        # connection, maximum age, locks released before reuse), sized and timed for pushes.
        self._pool = db.Pool(
            connect,
            name="callback-receiver",
            min_size=1,
            max_size=size,
            timeout=acquire_timeout,
            configure=configure,
            open=False,
        )

    def open(self) -> None:
        # Not waiting: a receiver whose database is down starts and answers 503 until it is back.
        self._pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self) -> Iterator[db.Connection]:
        stack = contextlib.ExitStack()
        try:
            # One round trip proves the connection works: a kept one that died while idle (a database
            # restart) is replaced and the ping tried once more on a new one, before any write.
            conn, _ = stack.enter_context(db.started(self._pool, db.ping))
        except errors.SyncWorkerError:
            # Tells a database that cannot be reached from one whose connections are all in use.
            kind = "database_unavailable" if self._pool.connect_failing else "busy"
            raise Busy(kind, f"no database connection within {self._acquire_timeout:g} s") from None
        with stack:
            yield conn

    def close(self) -> None:
        self._pool.close(timeout=5)
