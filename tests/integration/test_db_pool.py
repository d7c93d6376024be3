"""db.Pool (psycopg_pool, configured by db) and db.started on a real Postgres: which connections are
kept, how many exist at most, locks never handed on, a failed connect reported; a first statement retried."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from sync_worker import db as database
from sync_worker import errors
from tests.reliability import crash, proxy


def backend_pid(conn: database.Connection) -> int:
    with database.transaction(conn, single_statement=True) as cur:
        row = cur.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_a_connection_an_error_happened_on_is_not_kept(db_url: str) -> None:
    """Any database error retires its connection (not only a lost one), even when the caller handled
    it and the session ended normally; a connection without errors is kept and reused."""
    pool = database.Pool(database.connector(db_url), max_size=2)
    try:
        with database.session(pool) as conn:
            first = backend_pid(conn)
        with database.session(pool) as conn:
            assert backend_pid(conn) == first  # kept
            with pytest.raises(errors.StoreError), database.transaction(conn, single_statement=True) as cur:
                cur.execute("SELECT 1 / 0")
            assert not database.usable(conn)
            retired = conn
        assert retired.closed  # closed on the way back, never put in the pool
        with database.session(pool) as conn:
            assert backend_pid(conn) != first
    finally:
        pool.close()


def test_a_kept_connection_is_replaced_once_it_reaches_the_maximum_age(db_url: str) -> None:
    """A connection is reused until it is max_age old, then closed and replaced by a new one."""
    now = [0.0]
    pool = database.Pool(database.connector(db_url), max_size=1, max_age=60.0, clock=lambda: now[0])
    try:
        with database.session(pool) as conn:
            first = backend_pid(conn)
        now[0] = 59.0
        with database.session(pool) as conn:
            assert backend_pid(conn) == first
        now[0] = 60.0
        with database.session(pool) as conn:
            assert backend_pid(conn) != first
    finally:
        pool.close()


def test_a_first_statement_failing_on_kept_connections_is_retried_once_on_a_new_one(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Every kept connection ended by the server (a restart): the first statement fails on one, then
    runs on a new connection, not on the other dead kept one; a new connection's failure is raised."""
    pool = database.Pool(database.connector(db_url), max_size=2)
    try:
        with database.session(pool) as one, database.session(pool) as two:
            dead = {backend_pid(one), backend_pid(two)}
        for pid in dead:
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with database.started(pool, backend_pid) as (_, pid):
            assert pid not in dead
        calls: list[int] = []

        def always_fails(conn: database.Connection) -> None:
            calls.append(backend_pid(conn))
            raise errors.StoreError("refused")

        with pytest.raises(errors.StoreError), database.started(pool, always_fails):
            pass
        # The kept connection (the one just used) failed, then one new connection: no third try.
        assert len(calls) == 2 and len(set(calls)) == 2
    finally:
        pool.close()


def _sessions_named(db: psycopg.Connection[Any], name: str) -> int:
    row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_never_more_connections_than_max_size_and_a_waiting_checkout_gets_a_returned_one(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """With every connection lent, a checkout waits (and fails after the timeout naming the bound)
    instead of opening one more; a connection given back goes to the waiting checkout."""
    name = "pool-bound-test"
    pool = database.Pool(database.connector(db_url, application_name=name), max_size=2, timeout=0.5)
    try:
        with database.session(pool) as one, database.session(pool) as two:
            held = {backend_pid(one), backend_pid(two)}
            with pytest.raises(errors.DatabaseUnavailableError, match="at most 2"), database.session(pool):
                pass
            assert _sessions_named(db, name) == 2
        got: list[int] = []
        lent = threading.Event()
        release = threading.Event()

        def borrow() -> None:
            with database.session(pool) as conn:
                got.append(backend_pid(conn))
                lent.set()
                release.wait(10)

        with database.session(pool) as one, database.session(pool) as two:
            waiter = threading.Thread(target=borrow)
            waiter.start()
            crash.wait_until(
                lambda: pool.get_stats().get("requests_waiting", 0) > 0, 10, "the third checkout to wait"
            )
            assert not lent.is_set() and _sessions_named(db, name) == 2
        assert lent.wait(10)
        assert got[0] in held
        assert _sessions_named(db, name) <= 2
        release.set()
        waiter.join(10)
    finally:
        pool.close()


def test_a_session_level_lock_is_released_before_its_connection_is_lent_again(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """An advisory lock a borrower left on a pooled connection is free for others the moment the
    session ends, and the next borrower of that connection holds none."""
    pool = database.Pool(database.connector(db_url), max_size=1)
    try:
        with database.session(pool) as conn:
            first = backend_pid(conn)
            conn.execute("SELECT pg_advisory_lock(4242)")
        row = db.execute("SELECT pg_try_advisory_lock(4242)").fetchone()
        assert row == (True,)
        db.execute("SELECT pg_advisory_unlock(4242)")
        with database.session(pool) as conn:
            assert backend_pid(conn) == first
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            ).fetchone()
        assert held == (0,)
    finally:
        pool.close()


@pytest.mark.timing
def test_a_connection_that_cannot_be_made_is_reported_at_once_with_its_reason() -> None:
    """A database out of reach fails a checkout with the connector's own error (naming what failed)
    as soon as the pool's attempt fails, not after the pool's timeout."""
    connect = database.connector(
        "postgresql://nobody@127.0.0.1:9/none", failure="SYNC_DATABASE_URL: cannot connect"
    )
    pool = database.Pool(connect, max_size=2, timeout=30.0)
    try:
        began = time.monotonic()
        with (
            pytest.raises(errors.DatabaseUnavailableError, match="SYNC_DATABASE_URL: cannot connect"),
            database.session(pool),
        ):
            pass
        assert time.monotonic() - began < 10
        assert pool.connect_failing
    finally:
        pool.close()


@pytest.mark.timing
def test_an_outage_after_connections_were_kept_fails_a_start_at_once_with_its_reason_then_heals(
    db_url: str,
) -> None:
    """The database cut off after the pool kept a connection: the first statement fails on the kept one,
    the retry's connect is refused, and that reason is raised within seconds, not after the pool's
    timeout; with the database back, the next start works without a new pool."""
    with proxy.PgProxy(db_url) as pg:
        connect = database.connector(pg.conninfo(), failure="cannot connect to the test database")
        pool = database.Pool(connect, max_size=2, timeout=30.0)
        try:
            with database.session(pool) as conn:
                backend_pid(conn)
            pg.cut()
            began = time.monotonic()
            with (
                pytest.raises(errors.DatabaseUnavailableError, match="cannot connect to the test database"),
                database.started(pool, backend_pid),
            ):
                pass
            assert time.monotonic() - began < 10
            pg.restore()
            with database.started(pool, backend_pid) as (_, pid):
                assert pid > 0
        finally:
            pool.close()
