"""db.Pool and db.started on a real Postgres: which connections are kept; a first statement retried."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_worker import db as database
from sync_worker import errors


def backend_pid(conn: database.Connection) -> int:
    with database.transaction(conn, single_statement=True) as cur:
        row = cur.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_a_connection_an_error_happened_on_is_not_kept(db_url: str) -> None:
    """Any database error retires its connection (not only a lost one), even when the caller handled
    it and the session ended normally; a connection without errors is kept and reused."""
    pool = database.Pool(database.connector(db_url), keep=2)
    try:
        with database.session(pool) as conn:
            first = backend_pid(conn)
        with database.session(pool) as conn:
            assert backend_pid(conn) == first  # kept
            with pytest.raises(errors.StoreError), database.transaction(conn, single_statement=True) as cur:
                cur.execute("SELECT 1 / 0")
            assert not database.usable(conn)
        with database.session(pool) as conn:
            assert backend_pid(conn) != first
    finally:
        pool.close()


def test_a_kept_connection_is_replaced_once_it_reaches_the_maximum_age(db_url: str) -> None:
    """A connection is reused until it is max_age old, then closed and replaced by a new one."""
    now = [0.0]
    pool = database.Pool(database.connector(db_url), keep=1, max_age=60.0, clock=lambda: now[0])
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
    pool = database.Pool(database.connector(db_url), keep=2)
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
