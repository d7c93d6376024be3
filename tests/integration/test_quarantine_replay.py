"""`quarantine replay` reads only the top-level members of a kept body (real Postgres, the store's replay)."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

import psycopg
import pytest

from sync_worker import models, quarantine, store

ACCOUNT = "0252012345-00081"


def _message(i: int) -> dict[str, Any]:
    return {
        "deviceIds": [{"id": f"0012345678{i:04d}", "kind": "imei"}],
        "message": f"replay #{i}",
        "timestamp": f"2024-06-01T10:{i % 60:02d}:00Z",
    }


def _keep(db: psycopg.Connection[Any], body: bytes, *, kept: int | None = None) -> int:
    """A quarantined block of ``body`` (its first ``kept`` bytes only, when given)."""
    run_id = store.start_run(db, ACCOUNT)
    block = models.KeptBlock(
        http_status=202,
        request_token=None,
        next_token="Tok" + hashlib.sha256(body).hexdigest()[:10],
        problem="test",
        body=body if kept is None else body[:kept],
        body_size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        received_at=datetime.datetime.now(datetime.UTC),
    )
    return store.quarantine_block(db, run_id, ACCOUNT, block).quarantine_id


def _replay(db: psycopg.Connection[Any], quarantine_id: int) -> store.ReplayResult:
    result = store.replay_quarantined(db, quarantine_id, quarantine.read_block)
    assert result is not None
    return result


def _stored(db: psycopg.Connection[Any]) -> list[str]:
    return sorted(r[0] for r in db.execute("SELECT message FROM sms_history"))


@pytest.mark.parametrize(
    "body",
    [
        # The list under another name, with a "messages" list nested inside another member.
        {"hasMoreData": True, "smsMessages": [_message(1)], "meta": {"messages": [_message(2)]}},
        # Nested first, before any top-level member could be taken for it.
        {"meta": {"deep": [{"messages": [_message(3), _message(4)]}]}, "hasMoreData": False},
        # A top-level string that merely contains the text "messages":[
        {"note": '"messages":[{"message":"fake"}]', "hasMoreData": True},
    ],
    ids=["renamed_with_nested", "nested_first", "in_a_string"],
)
def test_nested_messages_are_not_the_block_not_resolved_nothing_stored(
    db: psycopg.Connection[Any], body: dict[str, Any]
) -> None:
    """A kept body whose only "messages":[...] is nested (or in a string): nothing stored, stays open."""
    quarantine_id = _keep(db, json.dumps(body).encode())
    result = _replay(db, quarantine_id)
    assert (result.resolved, result.messages, result.inserted) == (False, 0, 0)
    assert result.problem is not None and "top-level" in result.problem
    assert _stored(db) == []
    unresolved = db.execute("SELECT resolved_at IS NULL FROM sms_quarantine WHERE id = %s", (quarantine_id,))
    assert unresolved.fetchone() == (True,)


def test_top_level_messages_are_read_whole_and_resolved(db: psycopg.Connection[Any]) -> None:
    """A kept body with a top-level messages list (odd envelope around it): every message stored, resolved."""
    body = {
        "meta": {"messages": [_message(9)]},
        "hasMoreData": "true",
        "messages": [_message(1), _message(2)],
    }
    result = _replay(db, _keep(db, json.dumps(body).encode()))
    assert (result.resolved, result.messages, result.inserted, result.problem) == (True, 2, 2, None)
    assert _stored(db) == ["replay #1", "replay #2"]


def test_cut_short_body_stores_the_complete_top_level_messages_and_stays_open(
    db: psycopg.Connection[Any],
) -> None:
    """A body cut inside its top-level list (after a nested decoy): the complete messages before the cut are
    stored, the block stays unresolved."""
    whole = json.dumps(
        {
            "meta": {"messages": [_message(9)]},
            "hasMoreData": True,
            "messages": [_message(i) for i in range(5)],
        }
    ).encode()
    cut = whole.index(b"replay #3")
    result = _replay(db, _keep(db, whole[:cut]))
    assert (result.resolved, result.messages, result.inserted) == (False, 3, 3)
    assert _stored(db) == ["replay #0", "replay #1", "replay #2"]
    # The same with the whole body kept only in part (over the size cap): never resolved either.
    other = _replay(db, _keep(db, whole, kept=cut))
    assert not other.resolved and other.inserted == 0


def test_empty_top_level_list_is_not_resolved(db: psycopg.Connection[Any]) -> None:
    """A kept 202 whose top-level messages is empty holds nothing of the block: not resolved."""
    result = _replay(db, _keep(db, b'{"hasMoreData":true,"messages":[]}'))
    assert (result.resolved, result.messages) == (False, 0)
