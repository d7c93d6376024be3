"""Analyst queries from docs/schema.md on a skewed dataset: their plans use the indexes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

# One busy device holds a fifth of the traffic, as in the field; the rest is spread thin.
_ROWS = 40_000
_SEED_SQL = """
INSERT INTO sync_run (account_name, worker_host, worker_pid) VALUES ('0252012345-00001', 'seed', 1);
INSERT INTO sms_history (account_name, message_key, occurrence, device_kind, device_id, device_count,
                         message, received_at, raw_json)
SELECT '0252012345-0000' || (1 + g % 2),
       md5(g::text), 0, 'imei',
       CASE WHEN g % 5 = 0 THEN '990000862471854' ELSE lpad((g % 4000)::text, 15, '0') END,
       1, 'm' || g, timestamptz '2024-03-01' + g * interval '1 minute', '{}'
FROM generate_series(1, %(rows)s) AS g;
INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id, received_at)
SELECT id, 0, account_name, device_kind, device_id, received_at FROM sms_history;
ANALYZE sms_history;
ANALYZE sms_history_device;
"""
LAST_50_OF_A_DEVICE = """
SELECT received_at, message
FROM sms_by_device
WHERE device_kind = 'imei' AND device_id = '990000862471854'
ORDER BY received_at DESC
LIMIT 50
"""


@pytest.fixture
def seeded(db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    db.execute(
        _SEED_SQL.replace("%(rows)s", str(_ROWS))
    )  # a constant: the multi-statement script takes no parameters
    yield db


def _scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield plan["Node Type"], plan.get("Relation Name", "")
    for child in plan.get("Plans", ()):
        yield from _scans(child)


def test_last_messages_of_a_device_use_the_device_index(seeded: psycopg.Connection[Any]) -> None:
    """The flagship query (last 50 of the busiest device) reads the device index, scans no history table
    and returns the newest messages first."""
    row = seeded.execute("EXPLAIN (FORMAT JSON) " + LAST_50_OF_A_DEVICE).fetchone()
    assert row is not None
    plan = (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]
    nodes = list(_scans(plan))
    seq = [rel for node, rel in nodes if node == "Seq Scan" and rel.startswith("sms_history")]
    assert not seq, nodes
    assert ("Index Scan", "sms_history_device") in nodes or any(
        node.startswith("Index") and rel == "sms_history_device" for node, rel in nodes
    ), nodes
    assert not [node for node, _ in nodes if node == "Sort"], nodes
    got = seeded.execute(LAST_50_OF_A_DEVICE).fetchall()
    assert len(got) == 50
    assert [r[0] for r in got] == sorted((r[0] for r in got), reverse=True)
    newest = seeded.execute(
        "SELECT max(received_at) FROM sms_history WHERE device_id = '990000862471854'"
    ).fetchone()
    assert newest is not None and got[0][0] == newest[0]
