"""Defence in depth: a readable block that keeps failing to be stored is quarantined and replayable."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_worker import db as database
from sync_worker import errors, models, quarantine, status, store, sync
from tests.reliability import crash, inproc

ACCOUNT = "0252012345-00051"
ACCOUNTS = (ACCOUNT,)
_MARKER = " #150 temp="


def test_block_failing_to_store_in_three_runs_is_quarantined_then_replayed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same permanent error on one block in 3 runs: quarantined, the queue moves on, replay stores it."""
    real_commit = store.commit_block

    def commit_with_bug(conn: Any, run_id: int, page: models.HistoryPage) -> store.BlockResult:
        # Stands in for a bug of ours that only this block's content triggers.
        if any(_MARKER in (m.message or "") for m in page.messages):
            raise errors.StoreError("database error (DataError: simulated bug)")
        return real_commit(conn, run_id, page)

    monkeypatch.setattr(store, "commit_block", commit_with_bug)
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 450, seed=5))
        outcomes = []
        for _ in range(sync.FAILURE_STREAK_LIMIT):
            result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
            outcomes.append((result.accounts[0].outcome, result.exit_code))
        assert outcomes == [("failed", 1)] * (sync.FAILURE_STREAK_LIMIT - 1) + [("quarantined", 5)]
        # The queue moved past it: everything but the bad block is stored.
        assert crash.row_count(db_url) == 350
        with psycopg.connect(db_url, autocommit=True) as conn:
            [block] = status.list_quarantine(conn)
            assert "3 consecutive runs" in block.problem and block.http_status == 202
            # The bug is fixed: replay reads the kept bytes and stores the block's 100 messages.
            monkeypatch.setattr(store, "commit_block", real_commit)
            replayed = store.replay_quarantined(conn, block.id, quarantine.read_block)
            assert replayed is not None and (replayed.inserted, replayed.resolved) == (100, True)
            assert status.list_quarantine(conn) == []
            streak = conn.execute("SELECT count(*) FROM sync_block_failure").fetchone()
        cmp = crash.compare(sim, db_url, ACCOUNTS)
        assert streak == (1,)  # the quarantining run was not a plain success; a clean run clears it
        clean, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    assert cmp.exact, cmp
    assert clean.exit_code == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM sync_block_failure").fetchone() == (0,)


def test_failure_streak_restarts_for_another_block_or_error(db_url: str) -> None:
    """The streak only grows for the same block (token and bytes) and the same kind of error."""
    with database.connector(db_url)() as conn:

        def record(token: str | None, digest: str, kind: str) -> int:
            return store.record_block_failure(
                conn, ACCOUNT, request_token=token, body_sha256=digest, error_kind=kind, error="e"
            )

        assert [record("T1", "a", "StoreError") for _ in range(3)] == [1, 2, 3]
        assert record("T2", "a", "StoreError") == 1
        assert record("T2", "b", "StoreError") == 1
        assert record("T2", "b", "ValueError") == 1
        assert record(None, "b", "ValueError") == 1
        assert record(None, "b", "ValueError") == 2
