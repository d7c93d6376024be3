"""The write path on a real server: one transaction per block, replays, bad data, device rows, identity
at the edges."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import psycopg
import pytest

from sync_worker import errors, store
from tests.integration import store_data

# The shared helpers (tests/integration/store_data.py), under the names these tests were written with.
_count, _page, _run_row, _wire = store_data.count, store_data.page, store_data.run_row, store_data.wire


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
    store_data.fail_cursor_updates(db)
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
