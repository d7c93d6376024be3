"""Migration 0017 (issue 27, item 7): multi-device originals rebuilt byte for byte in place; every row
stored before it reads back exactly, keeps its key, and a replay of its block stores nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sync_worker import migrations, models, rows, store
from sync_worker.simulator import traffic
from tests.fixtures import database, store_0016, store_0017
from tests.integration import test_migration_0013, test_migration_0016

ACCOUNT = "0252012345-00017"
_A = {"id": "00351756051523001", "kind": "imei"}
_B = {"id": "5551234567", "kind": "msisdn"}
_C = {"id": "89148000000000000001", "kind": "iccid"}
# Several devices: rebuilt whatever the items after the first look like (upper-case kind, kind first,
# listed twice, an extra member; a timestamp without offset or not a time), not rebuilt when the first
# one or the message is not in the rebuild's spelling (upper-case first kind, kind first, keys
# reordered, a NUL).
_UPPER_B = {"id": "5551234567", "kind": "MSISDN"}
_KIND_FIRST = {"kind": "iccid", "id": "1"}
_UPPER_A = {"id": "00351756051523001", "kind": "IMEI"}


def _m(devices: list[dict[str, Any]], text: str, second: int, stamp: str | None = None) -> dict[str, Any]:
    return {"deviceIds": devices, "message": text, "timestamp": stamp or f"2024-05-03T10:00:{second:02d}Z"}


MULTI = [
    _m([_A, _B], "two", 0),
    _m([_A, _B, _C], 'Grüße 温度 \U0001f50b "q" \\', 1),
    _m([_A, _UPPER_B], "upper 2nd", 2),
    _m([_A, _KIND_FIRST], "kind first 2nd", 3),
    _m([_A, _A, _B, _UPPER_A], "twice", 4),
    _m([_A, {"id": "7", "kind": "eid", "slot": 2}], "member", 5),
    _m([_A, _B], "no offset", 6, "2024-05-03T10:00:06"),
    _m([{"id": "1", "kind": "IMEI"}, _B], "upper 1st", 7),
    _m([{"kind": "imei", "id": "1"}, _B], "kind first 1st", 8),
    {"timestamp": "2024-05-03T10:00:09Z", "message": "reordered", "deviceIds": [_A, _B]},
    _m([_A, _B], "nul \x00", 10),
    _m([_A, _B], "not a time", 11, "yesterday"),
]


def _page(wires: list[dict[str, Any]]) -> models.HistoryPage:
    return models.HistoryPage(
        account_name=ACCOUNT,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=True,
        status=202,
        next="tok",
    )


def _blocks() -> list[list[dict[str, Any]]]:
    blocks = [MULTI, test_migration_0016.ODD, *test_migration_0013.BLOCKS]
    for name, seed in (("mixed", 171), ("three-ids", 172)):
        shaped = traffic.shaped_messages(400, seed, traffic.SHAPES[name], until=1_800_000_000.0)
        blocks += [shaped[i : i + 100] for i in range(0, len(shaped), 100)]
    return blocks


def _read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT account_name, message_key, received_at, occurrence, device_kind, device_id, device_count,"
        " message, timestamp_raw, raw_json, raw::text, problems FROM sms_history"
        " ORDER BY account_name, message_key"
    ).fetchall()


def _devices(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT message_key, position, device_kind, device_id, message, received_at FROM sms_by_device"
        " ORDER BY message_key, position"
    ).fetchall()


def test_0017_rebuilds_multi_device_originals_in_place_and_reads_every_row_back_exactly(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Rows stored by the code before 0017 (every multi-device original kept whole) read back exactly
    after it, with their keys and device rows; the originals it stops keeping, and the texts it stores
    as JSON literals, are exactly those today's writer would; and every block delivered again inserts
    nothing (no message lost or doubled)."""
    blocks = _blocks()
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, database.migrations_before(tmp_path, "0017"))
        run_id = store.start_run(conn, ACCOUNT)
        with store_0016.writing():
            inserted = sum(store.commit_block(conn, run_id, _page(b)).inserted for b in blocks)
        before, devices_before = _read(conn), _devices(conn)
        kept_before = conn.execute("SELECT count(*) FROM sms_message WHERE raw_kept IS NOT NULL").fetchone()

        # Up to 0017 only: 0018 moves devices 2-3 and drops raw_devices again (test_migration_0018).
        assert migrations.migrate(conn, database.migrations_before(tmp_path, "0018")) == ["0017"]

        assert _read(conn) == before
        assert _devices(conn) == devices_before
        # The migration and today's writer agree row for row on which originals are rebuilt.
        rebuilt = {
            r[0]
            for r in conn.execute(
                "SELECT encode(message_key, 'hex') FROM sms_message"
                " WHERE raw_kept IS NULL AND raw_devices IS NOT NULL"
            )
        }
        kept = {
            r[0]
            for r in conn.execute(
                "SELECT encode(message_key, 'hex') FROM sms_message WHERE raw_kept IS NOT NULL"
            )
        }
        built = [
            r for b in blocks for r in rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(w) for w in b])
        ]
        assert rebuilt == {r.message_key for r in built if r.raw_devices is not None}
        assert kept == {r.message_key for r in built if r.raw_kept is not None}
        escaped = {
            r[0]
            for r in conn.execute(
                "SELECT encode(message_key, 'hex') FROM sms_message WHERE message_json IS NOT NULL"
            )
        }
        assert escaped == {r.message_key for r in built if r.message_json is not None}
        assert len(escaped) > 300
        assert kept_before is not None and kept_before[0] - len(kept) == len(rebuilt) > 300

        with store_0017.writing():
            assert sum(store.commit_block(conn, run_id, _page(b)).inserted for b in blocks) == 0
        assert len(_read(conn)) == len(before) == inserted
    by_text = {r[7]: r for r in before}
    for wire in [*MULTI[:7], MULTI[11]]:
        assert by_text[wire["message"]][1] in rebuilt, wire["message"]
    for wire in MULTI[7:11]:
        assert by_text[wire["message"].replace("\x00", "\ufffd")][1] in kept, wire["message"]
