"""Write path: ways to commit one block of 100 messages, against a plain COPY of the same rows.

    python -m bench.write_path [--blocks 200] [--reps 3] [--dsn URL]

Every variant writes the same blocks into a fresh migrated database and does
what a block commit must (rows idempotently, device rows, cursor, run
counters, one transaction), except "plain COPY", the floor: the same
sms_history rows copied with no conflict handling, no device rows, no cursor.
Rows are built once up front so the database side is compared; "commit_block
end to end" includes row building. Without --dsn the embedded server is used.

It compares ways of writing the v1 layout (``sms_history`` as a table, migrations 0001-0005);
since migration 0006 (history store v2) run it on the v1 tree, e.g. with
``sync_worker/`` and ``sql/`` of 9cc31ed first on ``PYTHONPATH`` (see ``bench.history_store``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg import sql

from sync_worker import embedded, migrations, models, queries, rows, store

BLOCK = 100
COLUMNS = (
    "account_name, message_key, occurrence, device_ids, device_kind, device_id, device_count,"
    " message, received_at, timestamp_raw, raw_json, raw, problems, run_id"
)
INSERT_ONE = (
    f"INSERT INTO sms_history ({COLUMNS}) VALUES"
    " (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
    " ON CONFLICT (account_name, message_key) DO NOTHING"
)
INSERT_DEVICE = (
    "INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id, received_at)"
    " SELECT id, %s, account_name, %s, %s, received_at FROM sms_history"
    " WHERE account_name = %s AND message_key = %s AND run_id = %s"
)
CURSOR = (
    "INSERT INTO sync_cursor (account_name, next_token, moved_at) VALUES (%s, %s, now())"
    " ON CONFLICT (account_name) DO UPDATE SET next_token = EXCLUDED.next_token, moved_at = now()"
)
RUN = (
    "UPDATE sync_run SET blocks = blocks + 1, messages_received = messages_received + %s,"
    " rows_inserted = rows_inserted + %s, replays = replays + %s WHERE id = %s"
)
STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage (
    message_key text, occurrence int, device_ids jsonb, device_kind text, device_id text, device_count int,
    message text, received_at timestamptz, timestamp_raw text, raw_json text, raw jsonb, problems text[]
) ON COMMIT DELETE ROWS
"""


def make_blocks(n_blocks: int, account: str) -> list[models.HistoryPage]:
    pages = []
    for b in range(n_blocks):
        wires = [
            {
                "deviceIds": [{"id": f"{(b * BLOCK + i) % 5000:015d}", "kind": "imei"}],
                "message": f"temp={b * BLOCK + i} battery=87 lat=40.7128 lon=-74.0060",
                "timestamp": f"2024-01-{1 + b % 28:02d}T{i % 24:02d}:{i % 60:02d}:{b % 60:02d}.123-05:00",
            }
            for i in range(BLOCK)
        ]
        pages.append(
            models.HistoryPage(
                account_name=account,
                messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
                has_more_data=True,
                status=202,
                next=f"tok{b}",
            )
        )
    return pages


def _device_ids_json(r: rows.Row) -> str:
    # v1's device_ids column; v2's Row no longer carries it (the layout this module writes is v1's).
    return json.dumps([{"id": ident, "kind": kind} for kind, ident in r.devices], separators=(",", ":"))


def _tuple(r: rows.Row, run_id: int) -> tuple[Any, ...]:
    return (
        r.account_name,
        r.message_key,
        r.occurrence,
        _device_ids_json(r),
        r.device_kind,
        r.device_id,
        len(r.devices),
        r.message,
        r.received_at,
        r.timestamp_raw,
        r.raw_json,
        r.raw_json if r.raw_is_jsonb else None,
        list(r.problems),
        run_id,
    )


def v_plain_copy(
    conn: psycopg.Connection[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]
) -> None:
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(f"COPY sms_history ({COLUMNS}) FROM STDIN") as copy,
    ):
        for r in built:
            copy.write_row(_tuple(r, run_id))


def _devices_and_counters(
    cur: psycopg.Cursor[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row], inserted: int
) -> None:
    cur.execute(CURSOR, (page.account_name, page.next))
    cur.execute(RUN, (len(built), inserted, len(built) - inserted, run_id))


def v_copy_staging(
    conn: psycopg.Connection[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(STAGE)
        with cur.copy(
            "COPY stage (message_key, occurrence, device_ids, device_kind, device_id, device_count, message,"
            " received_at, timestamp_raw, raw_json, raw, problems) FROM STDIN"
        ) as copy:
            for r in built:
                copy.write_row(_tuple(r, run_id)[1:-1])
        # The device rows come from the INSERT's RETURNING in the same statement, as in commit_block.
        cur.execute(
            f"WITH ins AS (INSERT INTO sms_history ({COLUMNS}) SELECT %s, message_key, occurrence,"
            " device_ids,"
            " device_kind, device_id, device_count, message, received_at, timestamp_raw, raw_json, raw,"
            " problems, %s FROM stage ON CONFLICT (account_name, message_key) DO NOTHING"
            " RETURNING id, account_name, device_kind, device_id, received_at),"
            " dev AS (INSERT INTO sms_history_device (history_id, position, account_name, device_kind,"
            " device_id, received_at) SELECT id, 0, account_name, device_kind, device_id, received_at"
            " FROM ins WHERE device_kind IS NOT NULL)"
            " SELECT count(*) FROM ins",
            (page.account_name, run_id),
        )
        row = cur.fetchone()
        inserted = int(row[0]) if row else 0
        _devices_and_counters(cur, run_id, page, built, inserted)


def _many(cur: psycopg.Cursor[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]) -> None:
    cur.executemany(INSERT_ONE, [_tuple(r, run_id) for r in built])
    inserted = cur.rowcount
    cur.executemany(
        INSERT_DEVICE,
        [
            (p, k, i, r.account_name, r.message_key, run_id)
            for r in built
            for p, (k, i) in enumerate(r.devices)
        ],
    )
    _devices_and_counters(cur, run_id, page, built, inserted)


def v_executemany(
    conn: psycopg.Connection[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        _many(cur, run_id, page, built)


def v_pipeline(
    conn: psycopg.Connection[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]
) -> None:
    with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        _many(cur, run_id, page, built)


def v_unnest(
    conn: psycopg.Connection[Any], run_id: int, page: models.HistoryPage, built: list[rows.Row]
) -> None:
    params = store._block_params(page.account_name, built, run_id=run_id, next_token=page.next)
    # Autocommit: the single statement is its own transaction (as in store.commit_block).
    with conn.cursor() as cur:
        cur.execute(queries.get("commit_block"), params, prepare=True)


VARIANTS: dict[str, Callable[..., None]] = {
    "plain COPY (floor: rows only)": v_plain_copy,
    "COPY to temp staging + INSERT..SELECT ON CONFLICT": v_copy_staging,
    "executemany": v_executemany,
    "pipeline mode (executemany)": v_pipeline,
    "single INSERT..SELECT FROM unnest(arrays) (store.commit_block)": v_unnest,
}


@contextmanager
def fresh_database(admin: str, name: str) -> Iterator[str]:
    url = psycopg.conninfo.make_conninfo(admin, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.migrate(conn)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def measure(admin: str, n_blocks: int, reps: int) -> dict[str, list[float]]:
    account = "0252012345-00001"
    pages = make_blocks(n_blocks, account)
    built = [rows.build_rows(account, p.messages) for p in pages]
    results: dict[str, list[float]] = {}
    for rep in range(reps):
        for label, fn in VARIANTS.items():
            with (
                fresh_database(admin, "bench_write_path") as url,
                psycopg.connect(url, autocommit=True) as conn,
            ):
                run_id = store.start_run(conn, account)
                start = time.perf_counter()
                for page, b in zip(pages, built, strict=True):
                    fn(conn, run_id, page, b)
                elapsed = time.perf_counter() - start
                results.setdefault(label, []).append(n_blocks * BLOCK / elapsed)
        with fresh_database(admin, "bench_write_path") as url, psycopg.connect(url, autocommit=True) as conn:
            run_id = store.start_run(conn, account)
            start = time.perf_counter()
            for page in pages:
                store.commit_block(conn, run_id, page)
            results.setdefault("store.commit_block end to end (incl. row building)", []).append(
                n_blocks * BLOCK / (time.perf_counter() - start)
            )
            start = time.perf_counter()
            for page in pages:
                store.commit_block(conn, run_id, page)
            results.setdefault("store.commit_block, replayed blocks", []).append(
                n_blocks * BLOCK / (time.perf_counter() - start)
            )
        start = time.perf_counter()
        for page in pages:
            rows.build_rows(account, page.messages)
        results.setdefault("rows.build_rows only (no database)", []).append(
            n_blocks * BLOCK / (time.perf_counter() - start)
        )
        print(f"rep {rep + 1}/{reps} done", flush=True)
    return results


def table(results: dict[str, list[float]]) -> str:
    floor = statistics.median(results["plain COPY (floor: rows only)"])
    lines = ["| variant (blocks of 100) | rows/s median | min..max | vs plain COPY |", "|---|---|---|---|"]
    for label, values in results.items():
        med = statistics.median(values)
        lines.append(f"| {label} | {med:,.0f} | {min(values):,.0f}..{max(values):,.0f} | {med / floor:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dsn", help="admin URL of a server to use instead of the embedded one")
    args = parser.parse_args()
    source = nullcontext(args.dsn) if args.dsn else embedded.server()
    with source as admin:
        with psycopg.connect(admin) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        results = measure(admin, args.blocks, args.reps)
    print(
        f"PostgreSQL {version[0] if version else '?'}, {args.blocks} blocks x {BLOCK} rows, {args.reps} reps"
    )
    print(table(results))


if __name__ == "__main__":
    main()
