"""Runs on a real server: begin_run's lock and cursor, finish_run's outcome, errors and failure streak,
the runs a dead worker left open."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from sync_worker import errors, migrations, retention, secret, store
from sync_worker import status as status_tables
from tests.integration import store_data
from tests.reliability import crash

# The shared helpers (tests/integration/store_data.py), under the names these tests were written with.
_count, _page, _run_row, _wire = store_data.count, store_data.page, store_data.run_row, store_data.wire


def test_finish_run_records_success_and_errors(db: psycopg.Connection[Any]) -> None:
    """finish_run closes the run and feeds the cursor's last_success_at / last_error, which status shows."""
    account = "acct-status"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1), _wire(2)]))
    store.finish_run(db, run_id, "succeeded", None)
    failed = store.start_run(db, account)
    store.finish_run(db, failed, "failed", "boom: status=503")
    assert _run_row(db, failed)[5:] == ("failed", "boom: status=503")
    [shown] = status_tables.account_status(db)
    assert shown.account_name == account
    assert shown.cursor_present
    assert shown.row_count == 2
    assert shown.last_run_outcome == "failed"
    assert shown.last_error == "boom: status=503"
    assert shown.last_success_at is not None
    assert shown.lag_seconds is not None and shown.lag_seconds >= 0


def test_finish_run_scrubs_secrets_from_stored_errors(db: psycopg.Connection[Any]) -> None:
    """A registered secret inside an error text never reaches the database."""

    secret.register("tok-SECRET-123456")
    run_id = store.start_run(db, "acct-secret")
    store.finish_run(db, run_id, "failed", "login refused for tok-SECRET-123456")
    row = db.execute("SELECT error FROM sync_run WHERE id = %s", (run_id,)).fetchone()
    cursor_row = db.execute("SELECT last_error FROM sync_cursor").fetchone()
    assert row is not None and cursor_row is not None
    assert "tok-SECRET-123456" not in row[0]
    assert "tok-SECRET-123456" not in cursor_row[0]


def test_clear_cursor_resets_token_and_keeps_reason(db: psycopg.Connection[Any]) -> None:
    """clear_cursor sends the next run to the head of the queue and records why."""
    account = "acct-clear"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="abc"))
    store.clear_cursor(db, account, "rejected by the API")
    assert store.get_cursor(db, account) is None
    assert db.execute("SELECT cleared_reason FROM sync_cursor").fetchone() == ("rejected by the API",)


def test_account_lock_is_exclusive_per_account(db_url: str) -> None:
    """Only one session holds an account's lock; other accounts and the migration lock are independent."""
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        assert store.try_account_lock(a, "acct-1")
        assert not store.try_account_lock(b, "acct-1")
        assert store.try_account_lock(b, "acct-2")

        # The migration lock lives in another namespace: holding account locks does not block migrate.
        assert migrations.migrate(b) == []
        store.release_account_lock(a, "acct-1")
        assert store.try_account_lock(b, "acct-1")


def test_begin_run_locks_opens_the_run_and_reads_the_cursor(db_url: str) -> None:
    """begin_run takes the account lock, opens a run row and returns the stored cursor; another
    session then gets None and leaves no run row behind."""
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        earlier = store.start_run(a, "acct-begin")
        store.commit_block(a, earlier, _page("acct-begin", [_wire(1)], next_token="tok-stored"))
        begun = store.begin_run(a, "acct-begin")
        assert begun is not None
        assert begun.cursor == "tok-stored"
        assert begun.run_id > earlier
        assert _run_row(a, begun.run_id)[5] == "running"
        assert store.begin_run(b, "acct-begin") is None
        assert _count(a, "sync_run") == 2
        assert not store.try_account_lock(b, "acct-begin")
        # Another account is free; an account never synced has no cursor.
        other = store.begin_run(b, "acct-other")
        assert other is not None and other.cursor is None


def test_begin_run_sees_the_cursor_committed_just_before_the_lock(db_url: str) -> None:
    """The cursor begin_run returns is the one the previous lock holder committed last."""
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        first = store.begin_run(a, "acct-handover")
        assert first is not None
        store.commit_block(a, first.run_id, _page("acct-handover", [_wire(1)], next_token="tok-1"))
        store.commit_block(a, first.run_id, _page("acct-handover", [_wire(2)], next_token="tok-2"))
        store.finish_run(a, first.run_id, "succeeded", None)
        store.release_account_lock(a, "acct-handover")
        second = store.begin_run(b, "acct-handover")
        assert second is not None and second.cursor == "tok-2"


def test_finish_run_clears_the_failure_streak_only_when_asked(db: psycopg.Connection[Any]) -> None:
    """finish_run ends the account's failure streak with clear_failure_streak, and keeps it otherwise."""
    account = "acct-streak"
    failure = {"request_token": "t", "body_sha256": "00", "error_kind": "StoreError", "error": "boom"}
    store.record_block_failure(db, account, **failure)
    failed = store.start_run(db, account)
    store.finish_run(db, failed, "failed", "boom")
    assert _count(db, "sync_block_failure") == 1
    succeeded = store.start_run(db, account)
    store.finish_run(db, succeeded, "succeeded", None, clear_failure_streak=True)
    assert _count(db, "sync_block_failure") == 0
    assert _run_row(db, succeeded)[5:] == ("succeeded", None)


def test_finish_run_of_an_unknown_run_is_an_error(db: psycopg.Connection[Any]) -> None:
    """Closing a run that does not exist raises StoreError and writes nothing."""
    with pytest.raises(errors.StoreError, match="does not exist"):
        store.finish_run(db, 987654, "succeeded", "note", clear_failure_streak=True)
    assert _count(db, "sync_cursor") == 0


def test_finish_run_with_a_note_still_records_success(db: psycopg.Connection[Any]) -> None:
    """A succeeded run with a quarantine note sets last_success_at and shows the note as last_error."""
    account = "acct-q-note"
    run_id = store.start_run(db, account)
    store.finish_run(db, run_id, "succeeded", "quarantined 1 unreadable block(s)")
    [status] = status_tables.account_status(db)
    assert status.last_run_outcome == "succeeded"
    assert status.last_success_at is not None
    assert status.last_error == "quarantined 1 unreadable block(s)"


def _kill_backend(victim: psycopg.Connection[Any], killer: psycopg.Connection[Any]) -> None:
    """End ``victim``'s server session (as a kill or a restart would) and wait until it is gone."""
    pid = victim.info.backend_pid
    killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    crash.wait_until(
        lambda: killer.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None,
        timeout=30,
        what=f"backend {pid} to exit",
    )


def test_begin_run_closes_the_runs_a_dead_worker_left_open(db_url: str) -> None:
    """The next begin_run of an account closes every run of it left open by a dead worker (abandoned);
    status and lock_holder then show the live run only, and retention can delete the closed one."""
    account = "acct-orphans"
    with (
        psycopg.connect(db_url, autocommit=True) as dead,
        psycopg.connect(db_url, autocommit=True) as other,
        psycopg.connect(db_url, autocommit=True) as next_worker,
        psycopg.connect(db_url, autocommit=True) as admin,
    ):
        older = store.begin_run(dead, account)
        assert older is not None
        store.finish_run(dead, older.run_id, "failed", "boom")  # closed: stays as it is
        killed = store.begin_run(dead, account)
        assert killed is not None
        elsewhere = store.begin_run(other, "acct-elsewhere")  # another account's live run
        assert elsewhere is not None
        _kill_backend(dead, admin)  # the worker dies mid-run: its lock goes, its run stays open

        begun = store.begin_run(next_worker, account)
        assert begun is not None and begun.abandoned == 1
        rows = {
            r[0]: r[1:]
            for r in admin.execute(
                "SELECT id, outcome, finished_at IS NOT NULL, error FROM sync_run ORDER BY id"
            ).fetchall()
        }
        assert rows[older.run_id][:2] == ("failed", True)
        assert rows[killed.run_id][:2] == ("abandoned", True)
        assert "closed by the account's next run" in rows[killed.run_id][2]
        assert rows[begun.run_id][:2] == ("running", False)
        assert rows[elsewhere.run_id][:2] == ("running", False)

        holder = status_tables.lock_holder(admin, account)
        started = admin.execute("SELECT started_at FROM sync_run WHERE id = %s", (begun.run_id,)).fetchone()
        assert holder is not None and started is not None and holder.started_at == started[0]
        store.finish_run(next_worker, begun.run_id, "succeeded", None)
        store.release_account_lock(next_worker, account)
        assert status_tables.lock_holder(admin, account) is None
        # Retention keeps each account's newest run and deletes closed older ones, the abandoned included.
        admin.execute("UPDATE sync_run SET started_at = now() - interval '800 days'")
        plan = retention.plan(admin, 365)
        assert plan.runs == 2
        retention.apply(admin, plan)
        left = {r[0] for r in admin.execute("SELECT id FROM sync_run").fetchall()}
        assert left == {begun.run_id, elsewhere.run_id}


def test_begin_run_with_every_run_closed_closes_nothing(db_url: str) -> None:
    """A run closed normally is never marked abandoned by the next one."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = store.begin_run(conn, "acct-clean")
        assert first is not None and first.abandoned == 0
        store.finish_run(conn, first.run_id, "succeeded", None)
        store.release_account_lock(conn, "acct-clean")
        second = store.begin_run(conn, "acct-clean")
        assert second is not None and second.abandoned == 0
        assert _run_row(conn, first.run_id)[5] == "succeeded"


def test_begin_run_on_a_lost_connection_raises_without_a_driver_warning(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pooled connection whose server session is gone fails begin_run with DatabaseUnavailableError
    and nothing else: no "error ignored terminating <psycopg.Pipeline [BAD]>" warning from the driver."""
    with (
        psycopg.connect(db_url, autocommit=True) as victim,
        psycopg.connect(db_url, autocommit=True) as killer,
    ):
        _kill_backend(victim, killer)
        with (
            caplog.at_level(logging.WARNING, logger="psycopg"),
            pytest.raises(errors.DatabaseUnavailableError),
        ):
            store.begin_run(victim, "acct-lost")
        assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
        assert victim.broken
        # The connection's pipeline state was cleaned up: psycopg reports it closed, not mid-pipeline.
        assert victim._pipeline is None
