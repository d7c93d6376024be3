"""Devices 2 and 3 of a message in its own row (migration 0018): the original is rebuilt from them byte
for byte, sms_by_device and the device functions see every device once, and a device filter on
sms_by_device reaches the index of every branch."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import models, rows, store
from tests.integration import store_data

# Every code point Postgres text can hold (no NUL, no lone surrogate).
_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
_KIND = st.sampled_from(sorted(models.DEVICE_KINDS))
ACCOUNT = "0252012345-00020"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.tuples(_TEXT, _KIND, _TEXT, _TEXT),
    others=st.lists(st.tuples(_KIND, _TEXT), min_size=0, max_size=2),
    escaped=st.booleans(),
)
def test_sql_rebuild_from_the_device_columns_is_the_workers_encoding(
    db: psycopg.Connection[Any],
    fields: tuple[str, str, str, str],
    others: list[tuple[str, str]],
    escaped: bool,
) -> None:
    """With raw_devices NULL, sms_history_rebuild_raw writes devices 2 and 3 from their columns exactly as
    the worker's JSON encoder spells the original (any text in the ids), and rows.devices_rebuilt is that
    same text: the writer stores raw_devices NULL only where the rebuild is the original."""
    ident, kind, text, stamp = fields
    original = json.dumps(
        {
            "deviceIds": [{"id": ident, "kind": kind}, *({"id": i, "kind": k} for k, i in others)],
            "message": text,
            "timestamp": stamp,
        },
        ensure_ascii=True,
        separators=(",", ":"),
    )
    rest = rows.devices_rebuilt([(kind, ident), *others])
    assert rows.rebuild_raw(ident, kind, text, stamp, rest) == original
    second = others[0] if others else (None, None)
    third = others[1] if len(others) > 1 else (None, None)
    row = db.execute(
        "SELECT sms_history_rebuild_raw(%s, %s, %s, %s, NULL, %s, %s, %s, %s, %s)",
        (
            ident,
            kind,
            text,
            stamp,
            json.dumps(text, ensure_ascii=True) if escaped else None,
            second[0],
            second[1],
            third[0],
            third[1],
        ),
    ).fetchone()
    assert row == (original,)


def _store(db: psycopg.Connection[Any], wires: list[dict[str, Any]]) -> None:
    store.commit_block(db, store.start_run(db, ACCOUNT), store_data.page(ACCOUNT, wires, next_token=None))


_FIVE = [
    {"id": "1", "kind": "imei"},
    {"id": "2", "kind": "MSISDN"},
    {"id": "1", "kind": "IMEI"},
    {"id": "3", "kind": "iccid"},
    {"id": "4", "kind": "eid"},
    {"id": "5", "kind": "esn"},
]
_TWO = {"id": "2", "kind": "msisdn"}


def test_every_distinct_device_of_a_message_is_one_sms_by_device_row_wherever_it_is_stored(
    db: psycopg.Connection[Any],
) -> None:
    """A message of five distinct devices (one listed twice, kinds in any case) is five sms_by_device
    rows at positions 0-4, the second and third from its row's columns and the others from device rows;
    the per-device counts (kind in any case) and sms_device_last_seen see each device once."""
    at = dt.datetime(2024, 6, 3, 10, 0, tzinfo=dt.UTC)
    _store(
        db,
        [
            {"deviceIds": _FIVE, "message": "five", "timestamp": "2024-06-03T10:00:00Z"},
            {"deviceIds": [_FIVE[3], _TWO], "message": "two", "timestamp": "2024-06-03T11:00:00Z"},
        ],
    )
    by_device = db.execute(
        "SELECT position, device_kind, device_id FROM sms_by_device WHERE message = 'five' ORDER BY position"
    ).fetchall()
    assert by_device == [
        (0, "imei", "1"),
        (1, "msisdn", "2"),
        (2, "iccid", "3"),
        (3, "eid", "4"),
        (4, "esn", "5"),
    ]
    columns = db.execute(
        "SELECT device2_kind, device2_id, device3_kind, device3_id, raw_devices IS NULL FROM sms_message"
        " ORDER BY received_at"
    ).fetchall()
    # The five-device original is not what the columns rebuild (MSISDN, listed twice, a 4th): kept as sent.
    assert columns == [("msisdn", "2", "iccid", "3", False), ("msisdn", "2", None, None, True)]
    assert db.execute("SELECT position FROM sms_message_device ORDER BY position").fetchall() == [(3,), (4,)]
    for kind, ident in (("IMEI", "1"), ("Msisdn", "2"), ("ICCID", "3"), ("eid", "4"), ("ESN", "5")):
        counts = db.execute(
            "SELECT sum(messages) FROM sms_device_daily_counts(%s, %s, '2024-06-03', '2024-06-03')",
            (kind, ident),
        ).fetchone()
        assert counts == (2 if ident in ("2", "3") else 1,), kind
    seen = db.execute(
        "SELECT device_kind, device_id, last_received_at, message FROM sms_device_last_seen(%s, %s)",
        (at, at + dt.timedelta(days=1)),
    ).fetchall()
    later = at + dt.timedelta(hours=1)
    assert seen == [
        ("eid", "4", at, "five"),
        ("esn", "5", at, "five"),
        ("iccid", "3", later, "two"),
        ("imei", "1", at, "five"),
        ("msisdn", "2", later, "two"),
    ]
    originals = [r[0] for r in db.execute("SELECT raw_json FROM sms_history ORDER BY received_at")]
    assert [json.loads(o)["deviceIds"] for o in originals] == [_FIVE, [_FIVE[3], _TWO]]


def test_a_device_filter_on_sms_by_device_reaches_the_index_of_every_branch(
    db: psycopg.Connection[Any],
) -> None:
    """WHERE device_kind = ... AND device_id = ... on sms_by_device becomes an index condition of the
    first device's index, the second's, the third's and the device rows' index, in every partition."""
    _store(db, [{"deviceIds": _FIVE, "message": "five", "timestamp": "2024-06-03T10:00:00Z"}])
    db.execute("SET enable_seqscan = off")
    db.execute("SET enable_bitmapscan = off")
    try:
        plan = "\n".join(
            str(r[0])
            for r in db.execute(
                "EXPLAIN SELECT * FROM sms_by_device WHERE device_kind = 'iccid' AND device_id = '3'"
                " ORDER BY received_at DESC LIMIT 5"
            )
        )
    finally:
        db.execute("RESET enable_seqscan")
        db.execute("RESET enable_bitmapscan")
    for index, cond in (
        (
            "device_kind_device_id_received_at_idx",
            "(device_kind = 'iccid'::text) AND (device_id = '3'::text)",
        ),
        (
            "device2_kind_device2_id_received_at_idx",
            "(device2_kind = 'iccid'::text) AND (device2_id = '3'::text)",
        ),
        (
            "device3_kind_device3_id_received_at_idx",
            "(device3_kind = 'iccid'::text) AND (device3_id = '3'::text)",
        ),
        ("device_kind_device_id_received_a_idx", "(device_kind = 'iccid'::text) AND (device_id = '3'::text)"),
    ):
        assert f"_p202406_{index} " in plan, (index, plan)
        assert f"Index Cond: ({cond})" in plan, (cond, plan)
    assert "Seq Scan" not in plan and "Sort  (" not in plan, plan
