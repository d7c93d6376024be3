"""The store's connection rules on a real server: lost connections, the caller's transaction,
autocommit, packed arrays."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from sync_worker import errors, pgarrays, store
from tests.integration import store_data

# The shared helpers (tests/integration/store_data.py), under the names these tests were written with.
_count, _page, _wire = store_data.count, store_data.page, store_data.wire


def test_lost_connection_is_database_unavailable(db_url: str) -> None:
    """A connection the server dropped surfaces as DatabaseUnavailableError, not a psycopg error."""
    with (
        psycopg.connect(db_url, autocommit=True) as victim,
        psycopg.connect(db_url, autocommit=True) as killer,
    ):
        pid = victim.info.backend_pid
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(errors.DatabaseUnavailableError):
            store.get_cursor(victim, "acct")


def test_write_inside_callers_transaction_is_refused(db_url: str) -> None:
    """A store write refuses to become part of a transaction the caller left open."""
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(errors.StoreError, match="already inside"):
            store.start_run(conn, "acct")


def test_non_autocommit_connection_commits_each_write(db_url: str) -> None:
    """With a non-autocommit connection each store call still commits on its own."""
    with psycopg.connect(db_url) as conn:
        run_id = store.start_run(conn, "acct-nac")
        store.commit_block(conn, run_id, _page("acct-nac", [_wire(1)]))
    with psycopg.connect(db_url) as other:
        assert other.execute("SELECT count(*) FROM sms_history").fetchone() == (1,)


def test_packed_arrays_read_back_as_the_values_sent(db: psycopg.Connection[Any]) -> None:
    """Postgres reads every packed array type (NULLs, empty, non-ASCII, far instants) as the values packed."""
    instants = [
        dt.datetime(1, 1, 2, tzinfo=dt.UTC),
        None,
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ]
    cases: list[tuple[Any, list[Any], str]] = [
        (pgarrays.text, ["a", "caf\u00e9 \U0001f600", None, ""], "text[]"),
        (pgarrays.text, [], "text[]"),
        (pgarrays.int4, [0, -(2**31), 2**31 - 1], "integer[]"),
        (pgarrays.boolean, [True, False], "boolean[]"),
        (pgarrays.bytea, [bytes(32), None, b""], "bytea[]"),
        (pgarrays.timestamptz, instants, "timestamptz[]"),
    ]
    with db.cursor() as cur:
        pgarrays.register(cur.adapters)
        for pack, values, kind in cases:
            row = cur.execute(f"SELECT %b::{kind}", [pack(values)]).fetchone()
            assert row is not None and row[0] == values, kind


def test_packed_arrays_are_registered_once_per_connection(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection registers the packed-array dumpers once, before its first block, and every
    block on it (and on a second, fresh connection) still stores its rows."""
    registered: list[object] = []
    real_register = pgarrays.register

    def counting(adapters: Any) -> None:
        registered.append(adapters)
        real_register(adapters)

    monkeypatch.setattr(pgarrays, "register", counting)
    account = "acct-adapters"
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        run_id = store.start_run(a, account)
        store.commit_block(a, run_id, _page(account, [_wire(i) for i in range(0, 10)], next_token="t1"))
        store.commit_block(a, run_id, _page(account, [_wire(i) for i in range(10, 20)], next_token="t2"))
        assert registered == [a.adapters]
        store.commit_block(b, run_id, _page(account, [_wire(i) for i in range(20, 30)], next_token="t3"))
        assert registered == [a.adapters, b.adapters]
        assert _count(a, "sms_history") == 30
        assert store.get_cursor(b, account) == "t3"
