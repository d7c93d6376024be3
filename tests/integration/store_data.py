"""Blocks, pages and table reads shared by the store tests (test_store_*.py)."""

from __future__ import annotations

from typing import Any

import psycopg

from sync_worker import models


def wire(i: int, *, device: str | None = None, text: str | None = None) -> dict[str, Any]:
    return {
        "deviceIds": [{"id": device or f"{i:015d}", "kind": "imei"}],
        "message": text if text is not None else f"reading {i}",
        "timestamp": f"2024-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}-05:00",
    }


def page(
    account: str, wires: list[Any], next_token: str | None = "tok-1", request_next: str | None = None
) -> models.HistoryPage:
    return models.HistoryPage(
        account_name=account,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=next_token is not None,
        status=202 if next_token is not None else 200,
        next=next_token,
        request_next=request_next,
    )


def count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def fail_cursor_updates(db: psycopg.Connection[Any]) -> None:
    """Make every later update of sync_cursor fail ('injected cursor failure'), after the rows of the
    same statement were written."""
    db.execute(
        """
        CREATE FUNCTION fail_cursor() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected cursor failure'; END $$;
        CREATE TRIGGER fail_cursor BEFORE UPDATE ON sync_cursor
            FOR EACH ROW EXECUTE FUNCTION fail_cursor();
        """
    )


def run_row(db: psycopg.Connection[Any], run_id: int) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT blocks, messages_received, rows_inserted, replays, malformed, outcome, error"
        " FROM sync_run WHERE id = %s",
        (run_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)
