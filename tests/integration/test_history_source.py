"""The history row's source (migration 0008): poll by default, push on request, first copy wins."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_worker import errors, models, store

ACCOUNT = "0252012345-00081"


def _page(wires: list[dict[str, Any]]) -> models.HistoryPage:
    return models.HistoryPage(
        account_name=ACCOUNT,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=False,
        status=200,
        next=None,
    )


def _wire(i: int) -> dict[str, Any]:
    return {
        "deviceIds": [{"id": f"{i:015d}", "kind": "imei"}],
        "message": f"reading {i}",
        "timestamp": f"2024-03-01T12:00:{i:02d}Z",
    }


def _sources(db: psycopg.Connection[Any]) -> dict[str, str]:
    rows = db.execute("SELECT message, source FROM sms_history ORDER BY message").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def test_commit_block_marks_rows_poll_by_default_and_push_on_request(db: psycopg.Connection[Any]) -> None:
    """Rows committed without a source are 'poll'; with source='push' they are 'push'."""
    run_id = store.start_run(db, ACCOUNT)
    store.commit_block(db, run_id, _page([_wire(1)]))
    store.commit_block(db, run_id, _page([_wire(2)]), source="push")
    assert _sources(db) == {"reading 1": "poll", "reading 2": "push"}


def test_a_message_committed_by_both_sources_is_one_row_with_the_first_source(
    db: psycopg.Connection[Any],
) -> None:
    """The same message pushed, then polled, collides on the message key: one row, source 'push'."""
    run_id = store.start_run(db, ACCOUNT)
    pushed = store.commit_block(db, run_id, _page([_wire(3)]), source="push")
    polled = store.commit_block(db, run_id, _page([_wire(3), _wire(4)]))
    assert (pushed.inserted, polled.inserted, polled.replays) == (1, 1, 1)
    assert _sources(db) == {"reading 3": "push", "reading 4": "poll"}


def test_the_store_refuses_a_source_other_than_poll_and_push(db: psycopg.Connection[Any]) -> None:
    """A row's source is one of its two documented values: the store refuses any other."""
    run_id = store.start_run(db, ACCOUNT)
    with pytest.raises(errors.StoreError):
        store.commit_block(db, run_id, _page([_wire(5)]), source="email")
