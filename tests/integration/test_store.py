"""The write path on a real server: one transaction per block, replays, bad data, locks, guard rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from typing import Any

import psycopg
import pytest

from sync_worker import errors, migrations, models, pgarrays, retention, secret, store
from sync_worker import status as status_tables
from tests.reliability import crash


def _wire(i: int, *, device: str | None = None, text: str | None = None) -> dict[str, Any]:
    return {
        "deviceIds": [{"id": device or f"{i:015d}", "kind": "imei"}],
        "message": text if text is not None else f"reading {i}",
        "timestamp": f"2024-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}-05:00",
    }


def _page(
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


def _count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _run_row(db: psycopg.Connection[Any], run_id: int) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT blocks, messages_received, rows_inserted, replays, malformed, outcome, error"
        " FROM sync_run WHERE id = %s",
        (run_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_block_rows_cursor_and_counters_land_together(db: psycopg.Connection[Any]) -> None:
    """A committed block stores every message, moves the cursor to its token and counts the run."""
    run_id = store.start_run(db, "0252012345-00001")
    result = store.commit_block(db, run_id, _page("0252012345-00001", [_wire(i) for i in range(100)]))
    assert (result.received, result.inserted, result.replays, result.malformed) == (100, 100, 0, ())
    assert store.get_cursor(db, "0252012345-00001") == "tok-1"
    assert _count(db, "sms_history") == 100
    assert _count(db, "sms_by_device") == 100
    assert _run_row(db, run_id)[:5] == (1, 100, 100, 0, 0)
    row = db.execute(
        "SELECT device_kind, device_id, message, received_at, timestamp_raw, raw, run_id"
        " FROM sms_history WHERE message = 'reading 7'"
    ).fetchone()
    assert row is not None
    assert row[0:3] == ("imei", "000000000000007", "reading 7")
    assert row[3].isoformat() == "2024-03-01T17:00:07+00:00"
    assert row[4] == "2024-03-01T12:00:07-05:00"
    assert row[5] == _wire(7)
    assert row[6] == run_id


def test_failure_between_upsert_and_cursor_update_moves_nothing(db: psycopg.Connection[Any]) -> None:
    """When the cursor update fails after the upsert ran, neither rows nor cursor nor counters move."""
    account = "acct-atomic"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="before"))
    # A trigger on sync_cursor fires after the rows were inserted in the same statement.
    db.execute(
        """
        CREATE FUNCTION fail_cursor() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected cursor failure'; END $$;
        CREATE TRIGGER fail_cursor BEFORE UPDATE ON sync_cursor
            FOR EACH ROW EXECUTE FUNCTION fail_cursor();
        """
    )
    with pytest.raises(errors.StoreError, match="injected cursor failure"):
        store.commit_block(db, run_id, _page(account, [_wire(i) for i in range(2, 50)], next_token="after"))
    assert _count(db, "sms_history") == 1
    assert _count(db, "sms_by_device") == 1
    assert store.get_cursor(db, account) == "before"
    assert _run_row(db, run_id)[:5] == (1, 1, 1, 0, 0)


def test_replayed_block_changes_nothing_and_counts_replays(db: psycopg.Connection[Any]) -> None:
    """Committing a block twice inserts nothing the second time and reports each message as a replay."""
    account = "acct-replay"
    page = _page(account, [_wire(i) for i in range(100)])
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, page)
    keys = "SELECT message_key, first_stored_at FROM sms_history ORDER BY message_key"
    before = db.execute(keys).fetchall()
    second = store.commit_block(db, run_id, page)
    assert (second.received, second.inserted, second.replays) == (100, 0, 100)
    assert db.execute(keys).fetchall() == before
    assert _count(db, "sms_by_device") == 100
    assert _run_row(db, run_id)[:4] == (2, 200, 100, 100)


def test_same_message_under_another_offset_is_a_replay(db: psycopg.Connection[Any]) -> None:
    """A replay whose timestamp is written in another offset maps onto the stored row."""
    account = "acct-offset"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(5)]))
    moved = dict(_wire(5), timestamp="2024-03-01T17:00:05Z")
    assert store.commit_block(db, run_id, _page(account, [moved])).replays == 1


def test_identical_messages_in_one_block_are_separate_rows(db: psycopg.Connection[Any]) -> None:
    """Two identical messages in one block become two rows, and replaying that block adds none."""
    account = "acct-twins"
    page = _page(account, [_wire(3), _wire(3), _wire(4)])
    run_id = store.start_run(db, account)
    assert store.commit_block(db, run_id, page).inserted == 3
    assert db.execute(
        "SELECT occurrence FROM sms_history WHERE message = 'reading 3' ORDER BY occurrence"
    ).fetchall() == [(0,), (1,)]
    assert store.commit_block(db, run_id, page).inserted == 0


def test_same_message_in_two_accounts_is_two_rows(db: psycopg.Connection[Any]) -> None:
    """Message identity is per account: the same message under two accounts is stored twice."""
    for account in ("acct-a", "acct-b"):
        run_id = store.start_run(db, account)
        assert store.commit_block(db, run_id, _page(account, [_wire(1)])).inserted == 1


MALFORMED: list[tuple[str, Any]] = [
    (
        "nul_in_text",
        {
            "deviceIds": [{"id": "1", "kind": "imei"}],
            "message": "a\x00b",
            "timestamp": "2024-01-01T00:00:00Z",
        },
    ),
    (
        "lone_surrogate",
        {
            "deviceIds": [{"id": "1", "kind": "imei"}],
            "message": "x\ud800y\udfff",
            "timestamp": "2024-01-01T00:00:00Z",
        },
    ),
    (
        "nul_in_key_and_device",
        {
            "deviceIds": [{"id": "1\x00", "kind": "imei"}],
            "message": "m",
            "timestamp": "2024-01-01T00:00:00Z",
            "k\x00": 1,
        },
    ),
    ("missing_fields", {}),
    ("missing_devices", {"message": "m", "timestamp": "2024-01-01T00:00:00Z"}),
    ("wrong_types", {"deviceIds": "imei:1", "message": 42, "timestamp": 1700000000}),
    (
        "device_item_wrong",
        {"deviceIds": [{"id": 5, "kind": "imei"}, "x"], "message": "m", "timestamp": "2024-01-01T00:00:00Z"},
    ),
    (
        "unparseable_timestamp",
        {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "m", "timestamp": "yesterday-ish"},
    ),
    (
        "no_offset",
        {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "m", "timestamp": "2024-01-01T00:00:00"},
    ),
    ("non_object_string", "just a string"),
    ("non_object_list", [1, 2, {"a": None}]),
    ("non_object_null", None),
    ("empty_device_list", {"deviceIds": [], "message": "m", "timestamp": "2024-01-01T00:00:00Z"}),
    (
        "unknown_kind",
        {"deviceIds": [{"id": "1", "kind": "SerialNo"}], "message": "m", "timestamp": "2024-01-01T00:00:00Z"},
    ),
    (
        "nan_value",
        {
            "deviceIds": [{"id": "1", "kind": "imei"}],
            "message": "m",
            "timestamp": "2024-01-01T00:00:00Z",
            "x": math.nan,
        },
    ),
]


def _same_json(a: Any, b: Any) -> bool:
    # NaN != NaN, so compare the canonical text instead of the values.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(("case", "wire"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed_message_is_stored_with_exact_original(
    db: psycopg.Connection[Any], case: str, wire: Any
) -> None:
    """Every kind of bad message still becomes a row whose raw_json decodes back to exactly what arrived."""
    account = "acct-bad"
    run_id = store.start_run(db, account)
    result = store.commit_block(db, run_id, _page(account, [_wire(1), wire]))
    assert result.inserted == 2
    assert [i for i, _ in result.malformed] == [1], case
    problems = result.malformed[0][1]
    assert problems
    row = db.execute(
        "SELECT raw_json, raw, problems, message FROM sms_history WHERE cardinality(problems) > 0"
    ).fetchone()
    assert row is not None
    raw_json, raw_jsonb, stored_problems, message = row
    decoded = json.loads(raw_json)
    assert _same_json(decoded, wire)
    assert type(decoded) is type(wire)
    assert list(stored_problems) == list(problems)
    if message is not None:
        assert "\x00" not in message
        message.encode("utf-8")
    if raw_jsonb is not None:
        assert _same_json(raw_jsonb, wire)
    assert _run_row(db, run_id)[4] == 1


def test_replacement_characters_are_reported(db: psycopg.Connection[Any]) -> None:
    """NUL and lone surrogates become U+FFFD in the message column and the problems say so."""
    account = "acct-fffd"
    run_id = store.start_run(db, account)
    wire = {
        "deviceIds": [{"id": "1", "kind": "IMEI"}],
        "message": "a\x00b\ud800",
        "timestamp": "2024-01-01T00:00:00Z",
    }
    store.commit_block(db, run_id, _page(account, [wire]))
    row = db.execute("SELECT message, problems, raw, device_kind, device_id FROM sms_history").fetchone()
    assert row is not None
    assert row[0] == "a\ufffdb\ufffd"
    assert any("U+FFFD" in p for p in row[1])
    assert row[2] is None  # jsonb cannot hold it; raw_json still does
    assert row[3:] == ("imei", "1")


def test_final_block_clears_the_cursor(db: psycopg.Connection[Any]) -> None:
    """The final block (no next token) leaves the cursor at the head of the queue."""
    account = "acct-final"
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [_wire(1)], next_token="t1"))
    store.commit_block(db, run_id, _page(account, [_wire(2)], next_token=None, request_next="t1"))
    assert store.get_cursor(db, account) is None
    assert _count(db, "sms_history") == 2


def test_multi_device_message_has_one_device_row_per_device(db: psycopg.Connection[Any]) -> None:
    """A message naming several devices is found under each of them in the per-device view."""
    account = "acct-multi"
    wire = {
        "deviceIds": [{"id": "111", "kind": "IMEI"}, {"id": "222", "kind": "msisdn"}],
        "message": "both",
        "timestamp": "2024-01-01T00:00:00Z",
    }
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [wire]))
    assert db.execute(
        "SELECT device_kind, device_id, position FROM sms_by_device WHERE message = 'both' ORDER BY position"
    ).fetchall() == [("imei", "111", 0), ("msisdn", "222", 1)]
    assert db.execute("SELECT device_kind, device_id, device_count FROM sms_history").fetchone() == (
        "imei",
        "111",
        2,
    )


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


# --- quarantined blocks -------------------------------------------------------------------


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
    db.execute(
        """
        CREATE FUNCTION fail_cursor() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected cursor failure'; END $$;
        CREATE TRIGGER fail_cursor BEFORE UPDATE ON sync_cursor
            FOR EACH ROW EXECUTE FUNCTION fail_cursor();
        """
    )
    with pytest.raises(errors.StoreError, match="injected cursor failure"):
        store.quarantine_block(db, run_id, account, _kept(b"not json"))
    assert _count(db, "sms_quarantine") == 0
    assert store.get_cursor(db, account) == "before-bad"
    row = db.execute("SELECT blocks, quarantined FROM sync_run WHERE id = %s", (run_id,)).fetchone()
    assert row == (1, 0)


def test_finish_run_with_a_note_still_records_success(db: psycopg.Connection[Any]) -> None:
    """A succeeded run with a quarantine note sets last_success_at and shows the note as last_error."""
    account = "acct-q-note"
    run_id = store.start_run(db, account)
    store.finish_run(db, run_id, "succeeded", "quarantined 1 unreadable block(s)")
    [status] = status_tables.account_status(db)
    assert status.last_run_outcome == "succeeded"
    assert status.last_success_at is not None
    assert status.last_error == "quarantined 1 unreadable block(s)"


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


# --- identity at the edges and duplicate devices (issue 27) ------------------------------


def test_sub_microsecond_instants_in_four_blocks_are_four_rows(db: psycopg.Connection[Any]) -> None:
    """Four distinct instants less than 1 µs apart (7 fractional digits), one per block, are four rows
    (the column keeps microseconds); each block delivered again inserts nothing."""
    account = "acct-nanos"
    stamps = [f"2024-05-01T11:00:00.{f}Z" for f in ("1234561", "1234562", "1234571", "1234572")]
    pages = [_page(account, [dict(_wire(1), timestamp=ts)]) for ts in stamps]
    run_id = store.start_run(db, account)
    assert [store.commit_block(db, run_id, p).inserted for p in pages] == [1, 1, 1, 1]
    assert [store.commit_block(db, run_id, p).inserted for p in pages] == [0, 0, 0, 0]
    got = db.execute("SELECT timestamp_raw, received_at FROM sms_history ORDER BY timestamp_raw").fetchall()
    assert [r[0] for r in got] == stamps
    assert [r[1].microsecond for r in got] == [123456, 123456, 123457, 123457]


def test_a_timestamp_with_trailing_garbage_is_malformed_and_not_the_clean_message(
    db: psycopg.Connection[Any],
) -> None:
    """`...Z<NUL>junk` is stored undated, flagged and exactly as sent; the clean message is another row."""
    account = "acct-junk"
    junk = dict(_wire(1), timestamp="2024-05-01T11:00:00Z\x00junk")
    clean = dict(_wire(1), timestamp="2024-05-01T11:00:00Z")
    run_id = store.start_run(db, account)
    assert store.commit_block(db, run_id, _page(account, [junk])).inserted == 1
    assert store.commit_block(db, run_id, _page(account, [clean])).inserted == 1
    row = db.execute(
        "SELECT received_at, problems, raw_json FROM sms_history WHERE received_at IS NULL"
    ).fetchone()
    assert row is not None and any("not ISO-8601" in p for p in row[1])
    assert json.loads(row[2]) == junk


def test_messages_differing_only_in_an_unknown_member_are_two_rows(db: psycopg.Connection[Any]) -> None:
    """Two blocks whose messages differ only in a messageId store both; each replay stores nothing."""
    account = "acct-mid"
    pages = [_page(account, [dict(_wire(1), messageId=f"m-{i}")]) for i in range(2)]
    run_id = store.start_run(db, account)
    assert [store.commit_block(db, run_id, p).inserted for p in pages] == [1, 1]
    assert [store.commit_block(db, run_id, p).inserted for p in pages] == [0, 0]


def test_a_device_listed_twice_counts_once(db: psycopg.Connection[Any]) -> None:
    """A message listing imei 5 three times (in two letter cases) is one device row for it: the
    per-device counts, the documented "last messages of a device" query and the kind argument in
    upper case all see it once; the original keeps the list as sent."""
    account = "acct-twice"
    wire = {
        "deviceIds": [
            {"id": "5", "kind": "imei"},
            {"id": "5", "kind": "IMEI"},
            {"id": "9", "kind": "msisdn"},
            {"id": "5", "kind": "imei"},
        ],
        "message": "twice",
        "timestamp": "2024-05-01T11:00:00Z",
    }
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, _page(account, [wire, _wire(2, device="5")]))
    assert db.execute(
        "SELECT device_kind, device_id, position FROM sms_by_device WHERE message = 'twice' ORDER BY position"
    ).fetchall() == [("imei", "5", 0), ("msisdn", "9", 1)]
    assert db.execute(
        "SELECT device_count, raw_json FROM sms_history WHERE message = 'twice'"
    ).fetchone() == (
        2,
        json.dumps(wire, separators=(",", ":")),
    )
    for kind in ("imei", "IMEI", "Imei"):
        assert db.execute(
            "SELECT day_utc, messages FROM sms_device_daily_counts(%s, '5', '2024-05-01', '2024-05-01')",
            (kind,),
        ).fetchall() == [(dt.date(2024, 5, 1), 1)]
    assert db.execute(
        "SELECT sum(messages) FROM sms_daily_device_counts WHERE device_kind = 'imei' AND device_id = '5'"
    ).fetchone() == (2,)
    last = db.execute(
        "SELECT message FROM sms_by_device WHERE device_kind = 'imei' AND device_id = '5'"
        " ORDER BY received_at DESC LIMIT 50"
    ).fetchall()
    assert sorted(last) == [("reading 2",), ("twice",)]
