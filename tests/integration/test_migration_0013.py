"""Migration 0013 in place on a database written by the code before it (issue 27, items 2-5).

Blocks are stored at schema 0012 with the key rules of that code (tests/fixtures/rows_0012.py, the
frozen rows.py of 0c4399a, through today's commit statement), the database is migrated, and then
every block is delivered again to today's code, as a crash between commit and acknowledgement across
the upgrade would: what the old rules had absorbed arrives, and nothing stored is stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sync_worker import identity, migrations, models, rows, store
from tests.fixtures import database, rows_0012, store_0016

ACCOUNT = "0252012345-00071"
_DEV = [{"id": "00351756051523999", "kind": "imei"}]


def _msg(text: str, ts: str, devices: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"deviceIds": devices if devices is not None else _DEV, "message": text, "timestamp": ts, **extra}


# Messages whose key the old rules computed right: their rows must keep their keys.
PLAIN = [
    _msg("plain", "2024-05-01T10:00:00Z"),
    _msg("millis", "2024-05-01T10:00:00.250-07:00"),
    _msg("six digits, trailing zeros beyond", "2024-05-01T10:00:00.1234560000Z"),
    _msg("upper", "2024-05-01T10:00:01Z", [{"id": "1", "kind": "IMEI"}]),
    _msg("nul \x00 text", "2024-05-01T10:00:02Z"),
    _msg("account named", "2024-05-01T10:00:03Z", accountName=ACCOUNT),
    _msg("null member", "2024-05-01T10:00:04Z", messageId=None),
    {"message": "malformed, no devices", "timestamp": "2024-05-01T10:00:05Z"},
]
# Four distinct instants within two microseconds: the old rules kept two.
SUB_MICRO = [_msg("tick", f"2024-05-01T11:00:00.{f}Z") for f in ("1234561", "1234562", "1234571", "1234572")]
# Distinct only by a member the model does not know: the old rules kept the first.
MESSAGE_IDS = [_msg("same text", "2024-05-01T12:00:00Z", messageId=f"m-{i}") for i in range(3)]
# One block: two messages that differ only in messageId, then a plain copy of the same core
# (occurrences 0, 1, 2 under the old rules; 0, 0, 0 now).
ONE_BLOCK = [
    _msg("in one block", "2024-05-01T12:30:00Z", messageId="a"),
    _msg("in one block", "2024-05-01T12:30:00Z", messageId="b"),
    _msg("in one block", "2024-05-01T12:30:00Z"),
]
# Trailing garbage after a NUL parsed as the clean time and took the clean message's key.
JUNK = _msg("junk", "2024-05-01T13:00:00Z\x00junk")
CLEAN = _msg("junk", "2024-05-01T13:00:00Z")
# A device extra member, a NUL text with a long fraction, a device listed three times.
ODD = [
    {"deviceIds": [{"id": "7", "kind": "Serial", "extra": 1}], "message": "", "timestamp": "not a time"},
    _msg("a\x00b", "2024-05-01T14:00:00.123456789Z"),
    _msg(
        'caf\u00e9 \U0001f600 "q"',
        "2024-05-01T09:00:00.5-05:00",
        [
            {"kind": "MSISDN", "id": "9"},
            {"id": "0042", "kind": "IMEI"},
            {"id": "1", "kind": "imei", "slot": None},
        ],
        messageId={"b": [1, 2.5, None], "a": "\u05e9"},
    ),
    _msg(
        "twice",
        "2024-05-01T15:00:00Z",
        [
            {"id": "5", "kind": "imei"},
            {"id": "5", "kind": "IMEI"},
            {"id": "9", "kind": "msisdn"},
            {"id": "5", "kind": "imei"},
        ],
    ),
]
BLOCKS: list[list[dict[str, Any]]] = [
    PLAIN,
    *[[m] for m in SUB_MICRO],
    *[[m] for m in MESSAGE_IDS],
    ONE_BLOCK,
    [JUNK],
    [CLEAN],
    ODD,
]


def _page(wires: list[dict[str, Any]]) -> models.HistoryPage:
    return models.HistoryPage(
        account_name=ACCOUNT,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=True,
        status=202,
        next="tok",
        request_next=None,
    )


# The extra devices of every message (device rows until 0018, row columns for the 2nd and 3rd since).
_EXTRA_DEVICES = "SELECT count(*) FROM sms_by_device WHERE position > 0"


def _store(conn: psycopg.Connection[Any], wires: list[dict[str, Any]]) -> int:
    return store.commit_block(conn, store.start_run(conn, ACCOUNT), _page(wires)).inserted


def _rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT raw_json, message_key, received_at, occurrence, device_count, problems FROM sms_history"
        " ORDER BY raw_json, message_key"
    ).fetchall()


def _new_keys(wires: list[dict[str, Any]]) -> list[str]:
    return [r.message_key for r in rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(w) for w in wires])]


def test_0013_rekeys_in_place_so_replays_across_the_upgrade_lose_and_double_nothing(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Rows the old rules stored read back exactly; those whose key the new rules change are re-keyed
    (others keep theirs); delivering every old block again to the new code then stores exactly the
    messages the old rules had absorbed, and the store ends up holding one row per message identity."""
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, database.migrations_before(tmp_path, "0013"))
        with store_0016.writing(rows_0012.build_block):
            old_inserted = [_store(conn, block) for block in BLOCKS]
        # What the old rules lost: 2 sub-microsecond instants, 2 messageIds, the clean message.
        assert old_inserted == [len(PLAIN), 1, 0, 1, 0, 1, 0, 0, 3, 1, 0, len(ODD)]
        before = _rows(conn)
        device_rows_before = conn.execute(_EXTRA_DEVICES).fetchone()

        assert migrations.migrate(conn) == [m.version for m in migrations.available() if m.version >= "0013"]

        after = _rows(conn)
        # Every original reads back exactly, one row each as before.
        assert sorted(r[0] for r in after) == sorted(r[0] for r in before)
        old_key = {r[0]: r[1] for r in before}
        new_key = {r[0]: r[1] for r in after}
        for plain in PLAIN:
            [key] = _new_keys([plain])
            raw_json = identity.dump_raw(plain)
            assert new_key[raw_json] == old_key[raw_json] == key, plain
        # Re-keyed rows now hold the key the new code gives them.
        for wire in [SUB_MICRO[0], SUB_MICRO[2], MESSAGE_IDS[0], ODD[0], ODD[1], ODD[2]]:
            assert new_key[identity.dump_raw(wire)] == _new_keys([wire])[0], wire
            assert new_key[identity.dump_raw(wire)] != old_key[identity.dump_raw(wire)], wire
        assert [new_key[identity.dump_raw(w)] for w in ONE_BLOCK] == _new_keys(ONE_BLOCK)
        junk = conn.execute(
            "SELECT received_at, message_key, problems FROM sms_history WHERE raw_json = %s",
            (identity.dump_raw(JUNK),),
        ).fetchone()
        assert junk is not None and junk[0] is None and junk[1] == _new_keys([JUNK])[0]
        assert any("not ISO-8601" in p for p in junk[2])
        # The device listed three times has one device row now: 4 listed, 2 distinct.
        twice = conn.execute(
            "SELECT device_count, (SELECT array_agg(device_kind || ':' || device_id ORDER BY position)"
            " FROM sms_by_device b WHERE b.message_key = h.message_key)"
            " FROM sms_history h WHERE message = 'twice'"
        ).fetchone()
        assert twice == (2, ["imei:5", "msisdn:9"])
        device_rows_after = conn.execute(_EXTRA_DEVICES).fetchone()
        assert device_rows_before is not None and device_rows_after is not None
        assert device_rows_before[0] - device_rows_after[0] == 2

        replayed = [_store(conn, block) for block in BLOCKS]
        # Only what the old rules had absorbed is new: 2 instants, 2 messageIds, the clean message.
        assert replayed == [0, 0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
        stored = {r[0] for r in conn.execute("SELECT message_key FROM sms_history").fetchall()}
        expected = {key for block in BLOCKS for key in _new_keys(block)}
        assert stored == expected
        assert [_store(conn, block) for block in BLOCKS] == [0] * len(BLOCKS)


def test_0013_keeps_a_row_whose_new_key_another_row_holds(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """A plain message stored in two blocks under the old rules (the second copy as occurrence 2,
    behind copies with messageIds) cannot take the new occurrence-0 key the first copy holds: it keeps
    its key, every row reads back, and the blocks delivered again store only the absorbed messageId."""
    first = [_msg("dup", "2024-05-02T10:00:00Z")]
    second = [
        _msg("dup", "2024-05-02T10:00:00Z", messageId="x"),
        _msg("dup", "2024-05-02T10:00:00Z", messageId="y"),
        _msg("dup", "2024-05-02T10:00:00Z"),
    ]
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, database.migrations_before(tmp_path, "0013"))
        with store_0016.writing(rows_0012.build_block):
            # x took the first copy's key (absorbed); y and the plain copy are occurrences 1 and 2.
            assert [_store(conn, first), _store(conn, second)] == [1, 2]
        before = _rows(conn)
        migrations.migrate(conn)
        after = _rows(conn)
        assert sorted(r[0] for r in after) == sorted(r[0] for r in before)
        assert [_store(conn, first), _store(conn, second)] == [0, 1]
        assert [_store(conn, first), _store(conn, second)] == [0, 0]
        count = conn.execute("SELECT count(*) FROM sms_history").fetchone()
        assert count == (4,)
