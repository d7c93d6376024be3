"""The measurements of ``bench.history_store``, run inside one variant's process.

``python -m bench.history_measure '<spec json>'`` is started by ``bench.history_store`` with
``PYTHONPATH`` (and the working directory) set to the tree under test, so ``import sync_worker``
resolves to that tree's package and ``queries.sql_root()`` to its ``sql/``: the same code measures
the v1 baseline and the working tree. It prints one JSON object (its results) as the last line
of stdout; progress goes to stderr.

Only the API both versions share is used: ``migrations.migrate`` (through ``bench.pg``),
``rows.build_rows``, ``store.start_run``, ``store.commit_block(conn, run_id, HistoryPage)`` and,
for the EXPLAIN, ``store._block_params`` with ``queries.get("commit_block")``.
``store.ensure_partitions`` exists in v2 only and is called when present.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from bench import in_tree, pg, proc, substitute

BLOCK: Final = 100
# Every table of either layout that holds history; views (v2's sms_history) are not counted.
HISTORY_TABLES: Final = ("sms_history", "sms_history_device", "sms_message", "sms_message_device")
# The 30M-row table: 24 months up to and including the month the measured traffic falls in
# (the simulator's traffic starts 2024-05-01T12:00Z), so new blocks land in a full partition.
BULK_END: Final = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
BULK_MONTHS: Final = 24
BULK_ACCOUNTS: Final = 20
BULK_DEVICES: Final = 200_000
# New traffic's account sorts between two bulk accounts: inserts land inside the key index, not at
# its right edge (which would be the cheapest possible case).
GROWTH_ACCOUNT_PREFIX: Final = "acct-07-grow-"

Spec = dict[str, Any]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pages(account: str, n: int, seed: int, shape: str | None = None) -> Iterator[Any]:
    """The simulator's default traffic (or traffic of the named ``shape``, ``traffic.SHAPES``) for
    ``account`` as ``HistoryPage`` blocks of 100."""
    from sync_worker import models, simulator

    if shape is None:
        raw = simulator.seed_messages(n, seed=seed)
    else:
        raw = simulator.seed_messages(n, seed=seed, shape=simulator.traffic.SHAPES[shape])
    blocks = math.ceil(n / BLOCK)
    for b in range(blocks):
        last = b == blocks - 1
        yield models.HistoryPage(
            account_name=account,
            messages=tuple(models.SMSMessage.from_wire(m) for m in raw[b * BLOCK : (b + 1) * BLOCK]),
            has_more_data=not last,
            status=200 if last else 202,
            next=None if last else f"{account}-{b:07d}",
        )


def _built(page_list: Sequence[Any]) -> list[list[Any]]:
    from sync_worker import rows

    return [rows.build_rows(p.account_name, p.messages) for p in page_list]


def _ensure_partitions(dsn: str, built: Sequence[Sequence[Any]]) -> bool:
    """v2 creates a month's partition the first time it sees the month; the daemon creates this
    month's and the next ahead of need. The simulator's traffic is dated 2024, so its partitions
    are created here, untimed, as the daemon would have. False for v1 (nothing to create)."""
    from sync_worker import store

    ensure = getattr(store, "ensure_partitions", None)
    if ensure is None:
        return False
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure(conn, [r.received_at for block in built for r in block])
    return True


def _cpu_seconds(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]  # psutil has no inline types

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


# --- sizes ---------------------------------------------------------------------

_LEAVES = """
WITH roots AS (
    SELECT c.oid, c.relname::text AS root, c.relkind
    FROM pg_class c
    WHERE c.relname = ANY(%(names)s) AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)
), leaves AS (
    -- pg_partition_tree lists nothing for a plain (v1) table: the table is its own leaf.
    SELECT r.root, t.relid
    FROM roots r CROSS JOIN LATERAL pg_partition_tree(r.oid) t
    WHERE t.isleaf
    UNION
    SELECT r.root, r.oid FROM roots r WHERE r.relkind = 'r'
)
"""


def sizes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Total relation size of every history table and partition, split into heap, TOAST, indexes."""
    tables = conn.execute(
        _LEAVES
        + """
        SELECT l.root, count(*) AS pieces,
               sum(pg_relation_size(l.relid, 'main'))::bigint AS heap,
               sum(pg_relation_size(l.relid, 'fsm') + pg_relation_size(l.relid, 'vm'))::bigint AS maps,
               sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0))::bigint AS toast,
               sum(pg_indexes_size(l.relid))::bigint AS indexes,
               sum(pg_total_relation_size(l.relid))::bigint AS total
        FROM leaves l JOIN pg_class c ON c.oid = l.relid
        GROUP BY l.root ORDER BY l.root
        """,
        {"names": list(HISTORY_TABLES)},
    ).fetchall()
    indexes = conn.execute(
        _LEAVES
        + """
        SELECT l.root, coalesce(pg_partition_root(i.indexrelid), i.indexrelid)::regclass::text,
               count(*), sum(pg_relation_size(i.indexrelid))::bigint
        FROM leaves l JOIN pg_index i ON i.indrelid = l.relid
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        {"names": list(HISTORY_TABLES)},
    ).fetchall()
    keys = ("pieces", "heap", "maps", "toast", "indexes", "total")
    return {
        "tables": {str(r[0]): dict(zip(keys, (int(v) for v in r[1:]), strict=True)) for r in tables},
        "indexes": [
            {"table": str(r[0]), "index": str(r[1]), "pieces": int(r[2]), "bytes": int(r[3])} for r in indexes
        ],
        "total": sum(int(r[6]) for r in tables),
    }


def column_widths(conn: psycopg.Connection[Any], table: str) -> dict[str, float]:
    """Average stored size per row of each column (``pg_column_size``, NULL = 0) and of the row datum."""
    cols = [
        str(r[0])
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
    ]
    # Per row, a NULL counting 0 (avg() would skip NULLs and overstate a mostly-NULL column).
    exprs = [sql.SQL("avg(pg_column_size(t.*))")] + [
        sql.SQL("avg(coalesce(pg_column_size(t.{}), 0))").format(sql.Identifier(c)) for c in cols
    ]
    query = sql.SQL("SELECT {} FROM {} t").format(sql.SQL(", ").join(exprs), sql.Identifier(table))
    row = conn.execute(query).fetchone()
    assert row is not None
    names = ["(row datum)", *cols]
    return {n: round(float(v or 0.0), 1) for n, v in zip(names, row, strict=True)}


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _history_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind IN ('r', 'p')"
            " AND pg_table_is_visible(oid) ORDER BY relname",
            (list(HISTORY_TABLES),),
        ).fetchall()
    ]


def task_bytes(spec: Spec) -> dict[str, Any]:
    """``messages`` of the simulator's traffic over ``accounts``, through ``store.commit_block``."""
    from sync_worker import store

    n, n_accounts = int(spec["messages"]), int(spec["accounts"])
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        dsn = pg.fresh_database(admin, "hs_bytes")
        pg_pid = proc.postmaster_pid(admin)
        names = [f"acct-{a:02d}" for a in range(n_accounts)]
        share = [n // n_accounts + (1 if a < n % n_accounts else 0) for a in range(n_accounts)]
        streams = [
            pages(name, k, seed=1000 + a) for a, (name, k) in enumerate(zip(names, share, strict=True))
        ]
        received = inserted = blocks = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_ids = {name: store.start_run(conn, name) for name in names}
            # Accounts take turns block by block, as concurrent accounts' commits interleave.
            t0 = time.perf_counter()
            with proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in itertools.chain.from_iterable(itertools.zip_longest(*streams)):
                    if page is None:
                        continue
                    result = store.commit_block(conn, run_ids[page.account_name], page)
                    received += result.received
                    inserted += result.inserted
                    blocks += 1
                    if blocks % 1000 == 0:
                        _log(f"    {blocks * BLOCK:,} messages committed ({time.perf_counter() - t0:.0f} s)")
            loaded = sizes(conn)
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
            vacuumed = sizes(conn)
            rows_stored = _count(conn, "sms_history")
            tables = _history_tables(conn)
            widths = {t: column_widths(conn, t) for t in tables}
            counts = {t: _count(conn, t) for t in tables}
    return {
        "messages": n,
        "accounts": n_accounts,
        "blocks": blocks,
        "received": received,
        "inserted": inserted,
        "rows_stored": rows_stored,
        "row_counts": counts,
        "load_seconds": cpu.wall,
        "load_cpu_seconds": {k: v for k, v in cpu.spent.items() if k != "simulator"},
        "sizes_as_loaded": loaded,
        "sizes": vacuumed,
        "bytes_per_message": vacuumed["total"] / rows_stored if rows_stored else float("nan"),
        "bytes_per_message_as_loaded": loaded["total"] / rows_stored if rows_stored else float("nan"),
        "column_widths": widths,
    }


# --- Postgres CPU per block -------------------------------------------------------


def explain_block(conn: psycopg.Connection[Any], run_id: int, page: Any) -> str:
    """EXPLAIN ANALYZE of the ``commit_block`` statement for one fresh block, rolled back."""
    from sync_worker import queries, rows, store

    if hasattr(rows, "build_block"):
        # Issue 14 on: the statement's columns straight from the messages, arrays packed.
        from sync_worker import pgarrays

        pgarrays.register(conn.adapters)
        block = rows.build_block(page.account_name, page.messages)
        params = store._block_params(conn, page.account_name, block, run_id=run_id, next_token=page.next)
    else:
        built = rows.build_rows(page.account_name, page.messages)
        params = store._block_params(page.account_name, built, run_id=run_id, next_token=page.next)  # type: ignore[call-arg, arg-type]
    with conn.transaction(force_rollback=True):
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, WAL) " + queries.get("commit_block"), params
        ).fetchall()
    return "\n".join(str(r[0]) for r in plan)


def task_cpu(spec: Spec) -> dict[str, Any]:
    """``blocks`` blocks of rows built beforehand, committed by ``store.commit_block`` into an empty
    migrated database: Postgres CPU (postmaster and every child, psutil, as bench.scenarios
    measures it) and wall time per block."""
    from sync_worker import store

    n_blocks, seed = int(spec["blocks"]), int(spec["seed"])
    account = "acct-cpu"
    page_list = list(pages(account, n_blocks * BLOCK, seed=seed))
    built = _built(page_list)
    probe = list(pages("acct-explain", BLOCK, seed=seed + 1))
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        dsn = pg.fresh_database(admin, "hs_cpu")
        pg_pid = proc.postmaster_pid(admin)
        partitioned = _ensure_partitions(dsn, built + _built(probe))
        pg.checkpoint(dsn)
        per_block: list[float] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_id = store.start_run(conn, account)
            backend_pid = conn.info.backend_pid
            backend_before = _cpu_seconds(backend_pid)
            inserted = 0
            with substitute.prebuilt_rows(page_list, built), proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in page_list:
                    t0 = time.perf_counter()
                    inserted += store.commit_block(conn, run_id, page).inserted
                    per_block.append((time.perf_counter() - t0) * 1000)
            backend = _cpu_seconds(backend_pid) - backend_before
            plan = explain_block(conn, run_id, probe[0])
        settings = pg.settings(admin)
    pg_cpu = cpu.spent.get("postgres", float("nan"))
    return {
        "blocks": n_blocks,
        "inserted": inserted,
        "partitions_created_untimed": partitioned,
        "pg_cpu_ms_per_block": pg_cpu / n_blocks * 1000,
        "pg_backend_cpu_ms_per_block": backend / n_blocks * 1000,
        # psutil reads CPU in clock ticks (10 ms): a difference below that is noise, not negative.
        "pg_other_cpu_ms_per_block": round(max(0.0, pg_cpu - backend) / n_blocks * 1000, 3),
        "client_cpu_ms_per_block": cpu.spent.get("worker", float("nan")) / n_blocks * 1000,
        "wall_ms_per_block": cpu.wall / n_blocks * 1000,
        "wall_ms_median_block": statistics.median(per_block),
        "explain": plan,
        "postgres_settings": settings,
    }


# --- growth: 30M rows already stored -------------------------------------------------

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


def _forget_growth_rows(dsn: str) -> None:
    """Remove what earlier timed blocks added, so the kept table stays exactly as loaded."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A range on the key index's leading column, not a LIKE (no pattern index).
        bounds = (GROWTH_ACCOUNT_PREFIX, GROWTH_ACCOUNT_PREFIX[:-1] + ".")
        deleted = conn.execute(
            "DELETE FROM sms_message WHERE account_name >= %s AND account_name < %s", bounds
        ).rowcount
        conn.execute("DELETE FROM sms_message_device WHERE account_name >= %s AND account_name < %s", bounds)
        conn.execute("DELETE FROM sync_cursor WHERE account_name >= %s AND account_name < %s", bounds)
        conn.execute("DELETE FROM sync_run WHERE account_name >= %s AND account_name < %s", bounds)
        if deleted:
            conn.execute("VACUUM (ANALYZE) sms_message")
            conn.execute("CHECKPOINT")


def _wal_lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wal_bytes(conn: psycopg.Connection[Any], since: str) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (since,)).fetchone()
    return int(row[0]) if row else 0


def _paired_commits(
    dsns: dict[str, str], page_list: Sequence[Any], built: Sequence[Any]
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each block committed into every database back to back, the order alternating per block, so
    drift on a shared machine hits them alike. Per database: each block's wall time (ms) of
    ``store.commit_block`` over prebuilt rows, and the WAL its commits wrote (the server's insert
    position read between commits, untimed: the bench is the only writer)."""
    from sync_worker import store

    labels = list(dsns)
    for dsn in dsns.values():
        pg.checkpoint(dsn)
    times: dict[str, list[float]] = {label: [] for label in labels}
    wal = dict.fromkeys(labels, 0)
    with contextlib.ExitStack() as stack:
        conns = {
            label: stack.enter_context(psycopg.connect(dsns[label], autocommit=True)) for label in labels
        }
        runs = {label: store.start_run(conns[label], page_list[0].account_name) for label in labels}
        stack.enter_context(substitute.prebuilt_rows(list(page_list), list(built)))
        for i, page in enumerate(page_list):
            for label in labels if i % 2 == 0 else labels[::-1]:
                conn = conns[label]
                lsn = _wal_lsn(conn)
                t0 = time.perf_counter()
                store.commit_block(conn, runs[label], page)
                times[label].append((time.perf_counter() - t0) * 1000)
                wal[label] += _wal_bytes(conn, lsn)
    return times, wal


def _explain_probe(dsn: str, page: Any) -> str:
    from sync_worker import store

    _ensure_partitions(dsn, _built([page]))
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_id = store.start_run(conn, page.account_name)
        return explain_block(conn, run_id, page)


def task_growth(spec: Spec) -> dict[str, Any]:
    """Per-block commit time into a database holding ``rows`` messages vs an empty one."""
    n_rows, n_blocks, reps = int(spec["rows"]), int(spec["blocks"]), int(spec["reps"])
    with pg.server(Path(spec["data_dir"])) as admin:
        pg.ensure_template(admin)
        t = time.perf_counter()
        big_name, big_dsn, provenance = big_database(admin, n_rows)
        setup_seconds = time.perf_counter() - t
        _forget_growth_rows(big_dsn)
        with psycopg.connect(big_dsn, autocommit=True) as conn:
            present_row = conn.execute("SELECT count(*) FROM sms_message").fetchone()
            present = int(present_row[0]) if present_row else 0
            in_partition_row = conn.execute(
                "SELECT count(*) FROM sms_message"
                " WHERE received_at >= '2024-05-01' AND received_at < '2024-06-01'"
            ).fetchone()
            in_partition = int(in_partition_row[0]) if in_partition_row else 0
            big_sizes = sizes(conn)
        empty_dsn = pg.fresh_database(admin, "hs_growth_empty")
        empty: list[float] = []
        big: list[float] = []
        wal: dict[str, list[float]] = {"empty": [], "big": []}
        plans: dict[str, str] = {}
        try:
            for rep in range(reps):
                account = f"{GROWTH_ACCOUNT_PREFIX}{rep}"
                page_list = list(pages(account, n_blocks * BLOCK, seed=700 + rep))
                built = _built(page_list)
                _ensure_partitions(empty_dsn, built)
                _ensure_partitions(big_dsn, built)
                dsns = (
                    {"empty": empty_dsn, "big": big_dsn}
                    if rep % 2 == 0
                    else {"big": big_dsn, "empty": empty_dsn}
                )
                times, wal_bytes = _paired_commits(dsns, page_list, built)
                empty.append(statistics.median(times["empty"]))
                big.append(statistics.median(times["big"]))
                for label in dsns:
                    wal[label].append(wal_bytes[label] / n_blocks)
                _log(f"    growth rep {rep + 1}: empty {empty[-1]:.3f} ms, {present:,} rows {big[-1]:.3f} ms")
            # Where a difference comes from: buffers read vs hit, WAL (full-page images after the
            # checkpoint), per node, for one more fresh block in each database.
            probe = next(pages(f"{GROWTH_ACCOUNT_PREFIX}explain", BLOCK, seed=799))
            plans = {"empty": _explain_probe(empty_dsn, probe), "big": _explain_probe(big_dsn, probe)}
        finally:
            _forget_growth_rows(big_dsn)
            pg.drop_database(admin, "hs_growth_empty")
    return {
        "rows_present": present,
        "rows_in_written_partition": in_partition,
        "blocks": n_blocks,
        "empty_ms": empty,
        "big_ms": big,
        "ratio": [b / e for b, e in zip(big, empty, strict=True)],
        "wal_bytes_per_block": wal,
        "explain": plans,
        "database": big_name,
        "provenance": provenance,
        "setup_seconds": setup_seconds,
        "big_sizes": big_sizes,
    }


# --- traffic shapes (issue 27's targets): bytes, Postgres CPU per block, raw_json read cost -------------


def _read_seconds(conn: psycopg.Connection[Any], expression: LiteralString, reps: int = 3) -> float:
    """The fastest of ``reps`` server-side executions of ``SELECT sum(length(<expression>))`` over
    sms_history (EXPLAIN ANALYZE's execution time, without the client's share)."""
    best = math.inf
    for _ in range(reps):
        plan = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT sum(length("
            + expression
            + ")) FROM sms_history"
        ).fetchone()
        assert plan is not None
        document = plan[0] if isinstance(plan[0], list) else json.loads(plan[0])
        best = min(best, float(document[0]["Execution Time"]) / 1000)
    return best


def task_shape(spec: Spec) -> dict[str, Any]:
    """One traffic shape: ``messages`` through ``store.commit_block`` (bytes per message after
    VACUUM, the share of originals kept, raw_json and raw read cost per row), then ``blocks``
    prebuilt blocks into an empty database (Postgres CPU per block, as ``task_cpu``)."""
    from sync_worker import store

    name, n, n_blocks = str(spec["shape"]), int(spec["messages"]), int(spec["blocks"])
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        pg_pid = proc.postmaster_pid(admin)
        dsn = pg.fresh_database(admin, "hs_shape")
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_id = store.start_run(conn, "acct-shape")
            received = 0
            for page in pages("acct-shape", n, seed=3100, shape=name):
                received += store.commit_block(conn, run_id, page).received
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
            measured = sizes(conn)
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE raw_kept IS NOT NULL),"
                " count(*) FILTER (WHERE device_count > 1) FROM sms_message"
            ).fetchone()
            assert row is not None
            stored, kept, multi = (int(v) for v in row)
            columns = _read_seconds(conn, "message")
            raw_json = _read_seconds(conn, "raw_json")
            raw = _read_seconds(conn, "raw::text")
            widths = {t: column_widths(conn, t) for t in _history_tables(conn)}
        pg.drop_database(admin, "hs_shape")

        account = "acct-shape-cpu"
        page_list = list(pages(account, n_blocks * BLOCK, seed=3200, shape=name))
        built = _built(page_list)
        dsn = pg.fresh_database(admin, "hs_shape_cpu")
        _ensure_partitions(dsn, built)
        pg.checkpoint(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            cpu_run = store.start_run(conn, account)
            with substitute.prebuilt_rows(page_list, built), proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in page_list:
                    store.commit_block(conn, cpu_run, page)
        pg.drop_database(admin, "hs_shape_cpu")
    per_row = 1e6 / max(1, stored)
    return {
        "shape": name,
        "received": received,
        "rows_stored": stored,
        "kept_share": kept / max(1, stored),
        "multi_device_share": multi / max(1, stored),
        "bytes_per_message": measured["total"] / max(1, stored),
        "sizes": measured,
        "column_widths": widths,
        "read_message_us_per_row": columns * per_row,
        "read_raw_json_us_per_row": (raw_json - columns) * per_row,
        "read_raw_us_per_row": (raw - columns) * per_row,
        "blocks": n_blocks,
        "pg_cpu_ms_per_block": cpu.spent.get("postgres", float("nan")) / n_blocks * 1000,
        "wall_ms_per_block": cpu.wall / n_blocks * 1000,
    }


TASKS: Final = {"bytes": task_bytes, "cpu": task_cpu, "growth": task_growth, "shape": task_shape}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec: Spec = json.loads(args[0])
    found = in_tree.check(Path(spec["tree"]))
    substitute.quiet_production_logging()
    result = TASKS[spec["task"]](spec)
    result["identity"] = found
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
