"""Migration 0016 (issue 27, item 6): raw_json and raw are rebuilt by inlined SQL, and every row stored
before it reads back exactly as before, with its key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sync_worker import migrations, models, simulator, store
from tests.fixtures import database, store_0016
from tests.integration import test_migration_0013

ACCOUNT = "0252012345-00016"
# Each branch of the rebuild: plain ASCII fields, a text with quotes, backslashes and control
# characters, DEL, non-ASCII and astral characters (repeated), an upper-case kind (kept), several
# devices (kept), a NUL (kept, not jsonb).
ODD = [
    {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "plain", "timestamp": "2024-05-02T10:00:00Z"},
    {
        "deviceIds": [{"id": "2", "kind": "imei"}],
        "message": 'say "hi"\\ \n\t\x01\x1f\x7f',
        "timestamp": "2024-05-02T10:00:01Z",
    },
    {
        "deviceIds": [{"id": "3", "kind": "msisdn"}],
        "message": "Tür geöffnet — é é 温度 \U0001f50b\U0001f50b \u2028",
        "timestamp": "2024-05-02T10:00:02+05:30",
    },
    {"deviceIds": [{"id": "4", "kind": "IMEI"}], "message": "upper", "timestamp": "2024-05-02T10:00:03Z"},
    {
        "deviceIds": [{"id": "5", "kind": "imei"}, {"id": "6", "kind": "msisdn"}],
        "message": "two",
        "timestamp": "2024-05-02T10:00:04Z",
    },
    {"deviceIds": [{"id": "7", "kind": "imei"}], "message": "nul \x00", "timestamp": "2024-05-02T10:00:05Z"},
]


def _page(wires: list[dict[str, Any]]) -> models.HistoryPage:
    return models.HistoryPage(
        account_name=ACCOUNT,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=False,
        status=200,
        next=None,
    )


def _read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT account_name, message_key, received_at, raw_json, raw::text FROM sms_history"
        " ORDER BY account_name, message_key"
    ).fetchall()


def test_rows_stored_before_0016_read_back_exactly_and_keep_their_keys(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """raw_json and raw of every row (simulator traffic, the 0013 test's odd messages and each branch
    of the rebuild) are the same before and after 0016, and so are the keys: nothing stored moved."""
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, database.migrations_before(tmp_path, "0016"))
        run_id = store.start_run(conn, ACCOUNT)
        with store_0016.writing():
            store.commit_block(conn, run_id, _page(ODD))
            for block in test_migration_0013.BLOCKS:
                store.commit_block(conn, run_id, _page(block))
            traffic = simulator.seed_messages(600, seed=16, until=1_800_000_000.0)
            for i in range(0, len(traffic), 100):
                store.commit_block(conn, run_id, _page(traffic[i : i + 100]))
        before = _read(conn)
        rebuilt = conn.execute("SELECT count(*) FROM sms_message WHERE raw_kept IS NULL").fetchone()
        assert migrations.migrate(conn) == [m.version for m in migrations.available() if m.version >= "0016"]
        assert _read(conn) == before
    assert rebuilt is not None and rebuilt[0] > 500 and len(before) > 600


def test_raw_json_is_rebuilt_inline(db: psycopg.Connection[Any]) -> None:
    """The planner inlines the rebuild into sms_history: reading raw_json calls no SQL function per row
    (only the PL/pgSQL escape, for text that is not plain ASCII), which is what makes it cheap."""
    plan = "\n".join(str(r[0]) for r in db.execute("EXPLAIN VERBOSE SELECT raw_json FROM sms_history"))
    assert "sms_history_rebuild_raw(" not in plan and "sms_json_string(" not in plan
    assert "sms_json_escape(" in plan
