"""The big history table: ``sms_message`` bulk-loaded with SQL (30M rows for ``make bench-store``,
10M for scenario 6 of ``make bench``), kept on the persistent bench server and reused while the
migrations and the loader are unchanged.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from bench import pg

# The 30M-row table: 24 months up to and including the month the measured traffic falls in
# (the simulator's traffic starts 2024-05-01T12:00Z), so new blocks land in a full partition.
BULK_END: Final = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
BULK_MONTHS: Final = 24
BULK_ACCOUNTS: Final = 20
BULK_DEVICES: Final = 200_000


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_BULK_INSERT = """
INSERT INTO sms_message (received_at, first_stored_at, run_id, occurrence, device_count, raw_is_jsonb,
                         account_name, message_key, device_kind, device_id, message, timestamp_raw,
                         raw_kept, problems)
SELECT s.received_at, s.received_at + interval '2 seconds', NULL, 0, 1, true, s.account_name,
       sha256(('bulk-' || s.i)::bytea), s.kind, s.device_id, s.message, s.stamp,
       -- One message in 20 came with an upper-case kind, as in the simulator: its original is kept.
       CASE WHEN s.i %% 20 = 0
            THEN sms_history_rebuild_raw(s.device_id, upper(s.kind), s.message, s.stamp) END,
       NULL
FROM (
    SELECT g.i,
           'acct-' || lpad((g.dev %% %(accounts)s)::text, 2, '0') AS account_name,
           (%(kinds)s::text[])[g.dev %% 7 + 1] AS kind,
           lpad(((g.dev * 7919 + 1234567) %% 1000000000000)::text, 15, '0') AS device_id,
           (%(texts)s::text[])[g.i %% %(n_texts)s + 1] || ' #' || g.i AS message,
           CASE WHEN g.i %% 4 = 0 THEN date_trunc('milliseconds', g.at) ELSE date_trunc('second', g.at) END
               AS received_at,
           CASE WHEN g.i %% 4 = 0
                THEN to_char(g.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                ELSE to_char((g.at AT TIME ZONE 'UTC') + (%(offsets)s::text[])[g.i %% 6 + 1]::interval,
                             'YYYY-MM-DD"T"HH24:MI:SS') || (%(offsets)s::text[])[g.i %% 6 + 1]
           END AS stamp
    FROM (
        -- Devices are skewed (a few busy ones, a long tail): device = floor(D * u^4) for a
        -- well-spread u in [0, 1); device 0 sends ~5%% of all messages; accounts follow devices.
        SELECT i, %(start)s::timestamptz + (i * %(step_ms)s::float8) * interval '1 millisecond' AS at,
               floor(%(devices)s * power(((i * 2654435761) %% 1000003)::float8 / 1000003, 4))::bigint AS dev
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
    ) g
) s
"""
_KINDS: Final = ("imei", "iccid", "mdn", "msisdn", "meid", "esn", "eid")
_OFFSETS: Final = ("-08:00", "-05:00", "+00:00", "+05:30", "-07:00", "+01:00")


def _bulk_fingerprint() -> str:
    digest = hashlib.sha256((pg.schema_fingerprint() + _BULK_INSERT).encode())
    return digest.hexdigest()[:10]


def _texts() -> list[str]:
    from sync_worker import simulator

    return sorted({str(m["message"]).rsplit(" #", 1)[0] for m in simulator.seed_messages(2000)})


def _parallel(dsn: str, jobs: Sequence[Sequence[tuple[Any, dict[str, Any] | None]]]) -> None:
    """Each job (a list of statements) on its own loader session, all at once (one per core)."""

    def run(statements: Sequence[tuple[Any, dict[str, Any] | None]]) -> None:
        with pg._loader(dsn) as conn:
            for statement, params in statements:
                conn.execute(statement, params)

    with concurrent.futures.ThreadPoolExecutor(max(1, len(jobs))) as pool:
        for fut in [pool.submit(run, job) for job in jobs]:
            fut.result()


def bulk_load(dsn: str, n_rows: int) -> float:
    """``n_rows`` into ``sms_message`` and its monthly partitions with SQL; return seconds.

    The table's indexes are dropped for the load and rebuilt from their own catalog definitions
    (a sorted build per partition instead of 30M index inserts), then VACUUM ANALYZE and a
    CHECKPOINT leave it as a long-running database would be.
    """
    started = time.perf_counter()
    start = dt.datetime(BULK_END.year - BULK_MONTHS // 12, BULK_END.month, 1, tzinfo=dt.UTC)
    step_ms = (BULK_END - start).total_seconds() * 1000 / n_rows
    with pg._loader(dsn) as conn:
        conn.execute(
            "SELECT sms_history_ensure_partition(m) FROM generate_series(%s::timestamptz, %s::timestamptz"
            " - interval '1 month', interval '1 month') AS m",
            (start, BULK_END),
        )
        cons = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'sms_message'::regclass AND contype IN ('p', 'u')"
        ).fetchall()
        idx = conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i"
            " WHERE indrelid = 'sms_message'::regclass"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        ).fetchall()
        for name, _ in cons:
            conn.execute(sql.SQL("ALTER TABLE sms_message DROP CONSTRAINT {}").format(sql.Identifier(name)))
        for name, _ in idx:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    texts = _texts()
    common: dict[str, Any] = {
        "n_texts": len(texts),
        "texts": texts,
        "accounts": BULK_ACCOUNTS,
        "devices": BULK_DEVICES,
        "kinds": list(_KINDS),
        "offsets": list(_OFFSETS),
        "start": start,
        "step_ms": step_ms,
    }
    half = n_rows // 2
    t = time.perf_counter()
    _parallel(
        dsn,
        [
            [(_BULK_INSERT, {**common, "lo": 0, "hi": half - 1})],
            [(_BULK_INSERT, {**common, "lo": half, "hi": n_rows - 1})],
        ],
    )
    _log(f"    rows: {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    with pg._loader(dsn) as conn:
        for name, definition in cons:
            conn.execute(
                sql.SQL("ALTER TABLE sms_message ADD CONSTRAINT {} {}").format(
                    sql.Identifier(name), sql.SQL(definition)
                )
            )
        for _, definition in idx:
            # The parent's definition says ON ONLY; built on the parent it recurses into every partition.
            conn.execute(sql.SQL(definition.replace(" ON ONLY ", " ON ")))
        _log(f"    indexes: {time.perf_counter() - t:.0f} s")
        parts = [
            str(r[0])
            for r in conn.execute(
                "SELECT relid::regclass::text FROM pg_partition_tree('sms_message') WHERE isleaf ORDER BY 1"
            ).fetchall()
        ]
    t = time.perf_counter()
    vacuums = [(sql.SQL("VACUUM {}").format(sql.Identifier(p)), None) for p in parts]
    _parallel(dsn, [vacuums[0::2], vacuums[1::2]])
    with pg._loader(dsn) as conn:
        conn.execute("ANALYZE sms_message")
        conn.execute("CHECKPOINT")
    _log(f"    vacuum + analyze + checkpoint: {time.perf_counter() - t:.0f} s")
    return time.perf_counter() - started


def big_database(admin_dsn: str, n_rows: int) -> tuple[str, str, str]:
    """The database holding ``n_rows`` in ``sms_message``: (name, dsn, how it was obtained).

    Kept on the persistent bench server and reused while the migrations and the loader are
    unchanged (the database's comment records a complete load); otherwise built again.
    """
    name = f"hs_big_{n_rows}_{_bulk_fingerprint()}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        stale = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
            (f"hs_big_{n_rows}_", name),
        ).fetchall()
    for (old,) in stale:
        pg.drop_database(admin_dsn, old)
    if row is not None and row[0]:
        meta = json.loads(row[0])
        if meta.get("complete"):
            return (
                name,
                pg.dsn_for(admin_dsn, name),
                f"loaded {meta['loaded_at']} in {meta['seconds']:.0f} s by an earlier run, reused",
            )
    dsn = pg.fresh_database(admin_dsn, name)
    _log(f"  loading {n_rows:,} rows into {name} (once; kept for later runs) ...")
    seconds = bulk_load(dsn, n_rows)
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    meta_text = json.dumps({"complete": True, "loaded_at": stamp, "seconds": round(seconds, 1)})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(meta_text))
        )
    return name, dsn, f"bulk-loaded in this run in {seconds:.0f} s (setup, not measured)"
