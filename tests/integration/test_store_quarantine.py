"""Quarantined blocks on a real server: the exact body kept, the cursor moved, replays, atomicity."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest

from sync_worker import errors, models, store
from sync_worker import status as status_tables
from tests.integration import store_data

# The shared helpers (tests/integration/store_data.py), under the names these tests were written with.
_count, _page, _wire = store_data.count, store_data.page, store_data.wire


def _kept(
    body: bytes, next_token: str | None = "after-bad", request_next: str | None = "before-bad"
) -> models.KeptBlock:
    return models.KeptBlock.from_error(_malformed(body, next_token, request_next))


def _malformed(
    body: bytes, next_token: str | None = "after-bad", request_next: str | None = "before-bad"
) -> errors.MalformedBlockError:
    return errors.MalformedBlockError(
        "history block body is unreadable",
        body=body,
        problem="response body is not JSON",
        next_token=next_token,
        request_next=request_next,
        status=202 if next_token is not None else 200,
        operation="list_devices_sms_messages",
    )


def _quarantine_rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT account_name, run_id, http_status, request_token, next_token, problem, body, body_size,"
        " body_sha256, seen_count FROM sms_quarantine ORDER BY id"
    ).fetchall()


def test_quarantine_keeps_the_exact_body_and_moves_the_cursor(db: psycopg.Connection[Any]) -> None:
    """quarantine_block stores the body byte for byte, moves the cursor to its next token and counts it."""
    account = "acct-quarantine"
    body = b"\x00\xff<html>\r\n" + bytes(range(256)) * 40
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="before-bad"))
    result = store.quarantine_block(db, run_id, account, _kept(body))
    assert result.inserted
    assert _quarantine_rows(db) == [
        (
            account,
            run_id,
            202,
            "before-bad",
            "after-bad",
            "response body is not JSON",
            body,
            len(body),
            hashlib.sha256(body).hexdigest(),
            1,
        )
    ]
    assert store.get_cursor(db, account) == "after-bad"
    row = db.execute("SELECT blocks, quarantined FROM sync_run WHERE id = %s", (run_id,)).fetchone()
    assert row == (1, 1)
    [status] = status_tables.account_status(db)
    assert status.quarantined == 1


def test_quarantined_final_block_clears_the_cursor(db: psycopg.Connection[Any]) -> None:
    """A quarantined final 200 leaves the cursor NULL, like a committed final block."""
    account = "acct-q-final"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="tok-x"))
    store.quarantine_block(db, run_id, account, _kept(b"null", next_token=None, request_next="tok-x"))
    assert store.get_cursor(db, account) is None
    assert db.execute("SELECT http_status, next_token FROM sms_quarantine").fetchall() == [(200, None)]


def test_replayed_quarantine_updates_one_row(db: psycopg.Connection[Any]) -> None:
    """The same block quarantined twice (a replay) is one row seen twice; head GETs (NULL tokens) too."""
    account = "acct-q-replay"
    run_id = store.start_run(db, account)
    for _ in range(2):
        store.quarantine_block(db, run_id, account, _kept(b"bad", request_next=None))
    second = store.quarantine_block(db, run_id, account, _kept(b"bad", request_next=None))
    assert not second.inserted
    other = store.quarantine_block(db, run_id, account, _kept(b"other", request_next=None))
    assert other.inserted
    rows = _quarantine_rows(db)
    assert [(r[6], r[9]) for r in rows] == [(b"bad", 3), (b"other", 1)]
    row = db.execute("SELECT quarantined FROM sync_run WHERE id = %s", (run_id,)).fetchone()
    assert row == (4,)


def test_failure_between_quarantine_insert_and_cursor_move_lands_nothing(
    db: psycopg.Connection[Any],
) -> None:
    """When the cursor update fails after the quarantine insert ran, no row, cursor move or count lands."""
    account = "acct-q-atomic"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="before-bad"))
    store_data.fail_cursor_updates(db)
    with pytest.raises(errors.StoreError, match="injected cursor failure"):
        store.quarantine_block(db, run_id, account, _kept(b"not json"))
    assert _count(db, "sms_quarantine") == 0
    assert store.get_cursor(db, account) == "before-bad"
    row = db.execute("SELECT blocks, quarantined FROM sync_run WHERE id = %s", (run_id,)).fetchone()
    assert row == (1, 0)
