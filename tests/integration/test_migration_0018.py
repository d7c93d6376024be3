"""Migration 0018: the second and third devices of stored messages move into their message's row and
raw_devices goes where the columns rebuild it; every row stored before reads back exactly, keeps its
key and its devices, and a replay of its block stores nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sync_worker import migrations, models, rows, store
from sync_worker.simulator import traffic
from tests.fixtures import database, store_0017
from tests.integration import store_data, test_migration_0013, test_migration_0016, test_migration_0017

ACCOUNT = "0252012345-00018"
_A = {"id": "00351756051523001", "kind": "imei"}
_B = {"id": "5551234567", "kind": "msisdn"}
_C = {"id": "89148000000000000001", "kind": "iccid"}
_D = {"id": "A1B2", "kind": "eid"}
_E = {"id": "7", "kind": "esn"}


def _m(devices: list[dict[str, Any]], text: str, second: int, stamp: str | None = None) -> dict[str, Any]:
    return {"deviceIds": devices, "message": text, "timestamp": stamp or f"2024-06-03T10:00:{second:02d}Z"}


# Four and five distinct devices (the 4th and later keep their rows), devices 2-3 in the rebuild's
# spelling or not, one listed twice before its third, an undated one, a malformed one.
MORE = [
    _m([_A, _B, _C, _D], "four", 0),
    _m([_A, _B, _C, _D, _E], "five", 1),
    _m([_A, _C, _B], "three", 2),
    _m([_A, _B, _B, _C], "twice then third", 3),
    _m([_A, {"id": "5551234567", "kind": "MSISDN"}, _C], "upper 2nd of three", 4),
    _m([_A, _B, _C], "undated", 5, "not a time"),
    _m([_A, _B, {"kind": "iccid", "id": "9"}, _D], "kind first 3rd of four", 6),
    {"deviceIds": [_A, _B, _C], "message": "extra member", "timestamp": "2024-06-03T10:00:07Z", "x": 1},
]


def _blocks() -> list[list[dict[str, Any]]]:
    blocks = [test_migration_0017.MULTI, MORE, test_migration_0016.ODD, *test_migration_0013.BLOCKS]
    for name, seed in (("mixed", 181), ("three-ids", 182)):
        shaped = traffic.shaped_messages(400, seed, traffic.SHAPES[name], until=1_800_000_000.0)
        blocks += [shaped[i : i + 100] for i in range(0, len(shaped), 100)]
    return blocks


def _page(wires: list[dict[str, Any]]) -> models.HistoryPage:
    return store_data.page(ACCOUNT, wires, next_token="tok")


def _devices(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT account_name, message_key, position, device_kind, device_id, message, received_at,"
        " timestamp_raw, problems, first_stored_at FROM sms_by_device ORDER BY message_key, position"
    ).fetchall()


def _read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT account_name, message_key, received_at, occurrence, device_kind, device_id, device_count,"
        " message, timestamp_raw, raw_json, raw::text, problems, first_stored_at FROM sms_history"
        " ORDER BY account_name, message_key"
    ).fetchall()


def test_0018_moves_devices_two_and_three_into_the_row_and_reads_every_row_back_exactly(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Rows stored by the code before 0018 (a device row per extra device, raw_devices for every
    rebuilt multi-device original) read back exactly after it, raw_json byte for byte, with their keys
    and the same sms_by_device rows; device rows at positions 1-2 are gone and the 4th and later stay;
    the raw_devices it drops are exactly those today's writer leaves NULL; every block delivered again
    inserts nothing (no message lost or doubled)."""
    blocks = _blocks()
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, database.migrations_before(tmp_path, "0018"))
        run_id = store.start_run(conn, ACCOUNT)
        with store_0017.writing():
            inserted = sum(store.commit_block(conn, run_id, _page(b)).inserted for b in blocks)
        before, devices_before = _read(conn), _devices(conn)
        device_rows = conn.execute(
            "SELECT count(*) FILTER (WHERE position IN (1, 2)), count(*) FILTER (WHERE position >= 3)"
            " FROM sms_message_device"
        ).fetchone()
        assert device_rows is not None and device_rows[0] > 600 and device_rows[1] == 4

        assert migrations.migrate(conn) == ["0018"]

        assert _read(conn) == before
        assert _devices(conn) == devices_before
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE position IN (1, 2)), count(*) FILTER (WHERE position >= 3)"
            " FROM sms_message_device"
        ).fetchone() == (0, 4)
        # The migration and today's writer agree row for row on every device column and raw_devices.
        stored = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT encode(message_key, 'hex'), device2_kind, device2_id, device3_kind, device3_id,"
                " raw_devices, raw_kept IS NULL FROM sms_message"
            )
        }
        built = [
            r for b in blocks for r in rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(w) for w in b])
        ]
        block = rows.Block.from_rows(built)
        expected = {
            r.message_key: (b2k, b2i, b3k, b3i, rest, r.raw_kept is None)
            for r, b2k, b2i, b3k, b3i, rest in zip(
                built,
                block.device2_kind,
                block.device2_id,
                block.device3_kind,
                block.device3_id,
                block.raw_devices,
                strict=True,
            )
        }
        assert stored == expected
        multi = sum(1 for r in built if len(r.devices) > 1 and r.raw_kept is None)
        dropped = sum(1 for r in built if r.raw_devices is not None) - sum(
            1 for v in stored.values() if v[4] is not None
        )
        assert multi > 500 and dropped > 450

        assert sum(store.commit_block(conn, run_id, _page(b)).inserted for b in blocks) == 0
        assert len(_read(conn)) == len(before) == inserted
    by_text = {r[7]: r for r in before}
    kept_rest = {k for k, v in stored.items() if v[4] is not None}
    for wire in MORE:
        assert by_text[wire["message"]][1] in stored, wire["message"]
    for text in ("three", "four", "five", "twice then third", "upper 2nd of three", "kind first 3rd of four"):
        assert (by_text[text][1] in kept_rest) == (text != "three"), text
