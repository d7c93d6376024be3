"""``sync.Store``'s contract, held by both implementations: ``store.PostgresStore`` on a real server and
the unit tests' ``tests.memory_store.MemoryStore``. What the drain-rule table proves with the fake holds
for Postgres only while both pass the same tests."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import pytest

from sync_worker import db, errors, gate, models, status, store, sync
from tests import fakes, memory_store

ACCOUNT = "0252012345-00001"

# How to read back a quarantined block's kept bytes (not part of the protocol: the sync never reads them).
KeptBody = Callable[[int], bytes]


@dataclasses.dataclass
class Subject:
    storage: sync.Store
    kept_body: KeptBody


@pytest.fixture(params=["postgres", "memory"])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "memory":
        mem = memory_store.MemoryStore()
        return Subject(mem, lambda quarantine_id: mem.kept[quarantine_id - 1].block.body)
    connect = db.connector(request.getfixturevalue("db_url"))

    def kept_body(quarantine_id: int) -> bytes:
        with db.session(connect) as conn:
            shown = status.show_quarantine(conn, quarantine_id)
        assert shown is not None
        return shown[0].body or b""

    return Subject(store.PostgresStore(connect), kept_body)


def page(name: str, next_token: str | None) -> models.HistoryPage:
    p = fakes.block(ACCOUNT, name, next_token, size=3)
    return dataclasses.replace(p, ticket=gate.Ticket(next_token, len(p.messages)))


def kept(next_token: str | None, body: bytes = b'{"messages": [') -> models.KeptBlock:
    error = errors.MalformedBlockError(
        "unreadable", body=body, problem="not JSON", next_token=next_token, request_next="t1", status=202
    )
    return models.KeptBlock.from_error(error)


def test_the_lock_is_held_for_the_session(subject: Subject) -> None:
    """While one session holds the account another begins no run (and names the holder); after it, one can."""
    with subject.storage.begin_run(ACCOUNT) as first:
        assert first.start is not None
        with subject.storage.begin_run(ACCOUNT) as second:
            assert second.start is None
            assert second.lock_holder() is not None
        first.finish_run("succeeded", None, clear_failure_streak=True)
    with subject.storage.begin_run(ACCOUNT) as third:
        assert third.start is not None and third.start.run_id != first.start.run_id


def test_a_commit_moves_the_cursor_with_the_rows_and_then_settles_the_ticket(subject: Subject) -> None:
    """commit_block stores the rows and the cursor together, settles the ticket, and counts a replay."""
    block = page("b1", "t1")
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.cursor is None
        assert block.ticket is not None
        before = block.ticket.settled
        first = session.commit_block(block)
        assert (before, block.ticket.settled) == (None, "committed")
        assert gate.release(block.ticket) == "t1"
        again = session.commit_block(page("b1", "t1"))
        session.finish_run("succeeded", None, clear_failure_streak=True)
    assert (first.received, first.inserted, first.replays) == (3, 3, 0)
    assert (again.received, again.inserted, again.replays) == (3, 0, 3)
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.cursor == "t1"
        session.commit_block(page("b2", None))
        session.finish_run("succeeded", None, clear_failure_streak=True)
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.cursor is None


def test_a_quarantine_keeps_the_bytes_and_moves_the_cursor_past_them(subject: Subject) -> None:
    """quarantine_block keeps the body, moves the cursor, settles the ticket; the same block again: 1 row."""
    ticket = gate.Ticket("t2", None)
    with subject.storage.begin_run(ACCOUNT) as session:
        result = session.quarantine_block(kept("t2"), ticket)
        assert ticket.settled == "quarantined"
        again = session.quarantine_block(kept("t2"), None)
        session.finish_run("quarantined", "note", clear_failure_streak=False)
    assert (result.inserted, again.inserted, again.quarantine_id) == (True, False, result.quarantine_id)
    assert subject.kept_body(result.quarantine_id) == b'{"messages": ['
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.cursor == "t2"


def test_the_failure_streak_counts_the_same_failure_and_a_success_ends_it(subject: Subject) -> None:
    """The same block failing with the same error kind extends the streak; another kind or a success: 1."""
    digest = hashlib.sha256(b"block").hexdigest()
    same = {"request_token": "t1", "body_sha256": digest, "error": "x"}
    with subject.storage.begin_run(ACCOUNT) as session:
        streaks = [session.record_block_failure(error_kind="StoreError", **same) for _ in range(2)]
        streaks.append(session.record_block_failure(error_kind="KeyError", **same))
        session.finish_run("succeeded", None, clear_failure_streak=True)
    with subject.storage.begin_run(ACCOUNT) as session:
        streaks.append(session.record_block_failure(error_kind="KeyError", **same))
    assert streaks == [1, 2, 1, 1]


def test_a_run_left_open_is_closed_by_the_next(subject: Subject) -> None:
    """A session ended without finish_run (its process died) is closed as abandoned by the next begin_run."""
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.abandoned == 1


def test_a_cleared_cursor_starts_the_next_run_at_the_head(subject: Subject) -> None:
    """clear_cursor forgets the stored token."""
    with subject.storage.begin_run(ACCOUNT) as session:
        session.commit_block(page("b1", "t1"))
        session.clear_cursor("next token rejected by the API")
        session.finish_run("succeeded", None, clear_failure_streak=True)
    with subject.storage.begin_run(ACCOUNT) as session:
        assert session.start is not None and session.start.cursor is None
