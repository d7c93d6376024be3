"""The benchmark's Postgres: the embedded default (durable), fresh databases, the big table.

``SYNC_BENCH_DATABASE_URL`` points the run at another server instead (its
settings are printed with the table, whatever they are).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

SETTINGS_SHOWN = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
)
TEMPLATE = "bench_template"


@contextlib.contextmanager
def server(data_dir: Path | None = None) -> Iterator[str]:
    """The admin DSN of the server the run uses."""
    url = os.environ.get("SYNC_BENCH_DATABASE_URL")
    if url:
        yield url
        return
    from sync_worker import embedded

    with embedded.server(data_dir) as dsn:
        yield dsn


def dsn_for(admin_dsn: str, dbname: str) -> str:
    return conninfo.make_conninfo(admin_dsn, dbname=dbname)


def settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        out: dict[str, str] = {}
        for name in SETTINGS_SHOWN:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            out[name] = str(row[0]) if row else "?"
        return out


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def ensure_template(admin_dsn: str) -> None:
    """A migrated database to clone: every measurement starts from the real schema."""
    from sync_worker import migrations

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if _exists(conn, TEMPLATE):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with psycopg.connect(dsn_for(admin_dsn, TEMPLATE), autocommit=True) as conn:
        migrations.migrate(conn)


def fresh_database(admin_dsn: str, name: str) -> str:
    """Drop ``name`` if present, clone the migrated template into it, return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
        )
    return dsn_for(admin_dsn, name)


def checkpoint(dsn: str) -> None:
    """Start each timed region with no dirty pages left over from the previous one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def count_rows(dsn: str, table: str = "sms_history") -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        return int(row[0]) if row else 0


_TABLES = ("sms_history", "sms_history_device")

_HEAP_INSERT = """
INSERT INTO sms_history (account_name, message_key, occurrence, device_ids, device_kind,
                         device_id, device_count, message, received_at, timestamp_raw,
                         raw_json, raw, problems, first_stored_at, run_id)
SELECT g.acct, g.key, 0, g.dev, 'imei', g.devid, 1, g.msg, g.ts, g.stamp,
       r.raw::text, r.raw, '{}', now(), NULL
FROM (
    SELECT 'bulk-' || lpad((i %% %(accounts)s::int)::text, 4, '0') AS acct,
           encode(sha256(('bulk-' || i)::bytea), 'hex') AS key,
           jsonb_build_array(jsonb_build_object('id', lpad((i %% 50000)::text, 15, '0'),
                                                'kind', 'imei')) AS dev,
           lpad((i %% 50000)::text, 15, '0') AS devid,
           'reading ' || i || ' temp=' || (i %% 40) || ' batt=' || (i %% 100) AS msg,
           timestamptz '2024-01-01 00:00:00+00' + i * interval '3 seconds' AS ts,
           to_char((timestamptz '2024-01-01 00:00:00+00' + i * interval '3 seconds') AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS stamp
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
) g
CROSS JOIN LATERAL (
    SELECT jsonb_build_object('deviceIds', g.dev, 'message', g.msg, 'timestamp', g.stamp) AS raw
) r
"""
_DEVICE_INSERT = """
INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id, received_at)
SELECT id, 0, account_name, device_kind, device_id, received_at FROM sms_history
WHERE id %% 2 = %(part)s
"""


def _loader(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    # Setup, not a measured write: this session alone skips the commit flush.
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute("SET work_mem = '128MB'")
    return conn


def _both(dsn: str, statement: str, params: list[dict[str, Any]]) -> None:
    """Run ``statement`` once per params set, on two sessions at once (one per core)."""
    import concurrent.futures

    def one(p: dict[str, Any]) -> None:
        with _loader(dsn) as conn:
            conn.execute(statement, p)

    with concurrent.futures.ThreadPoolExecutor(len(params)) as pool:
        for fut in [pool.submit(one, p) for p in params]:
            fut.result()


def bulk_load(dsn: str, n_rows: int, accounts: int = 20, log: Any = None) -> float:
    """Fill ``sms_history`` (and its device rows) with ``n_rows`` realistic rows; return seconds.

    Constraints and indexes are dropped for the load and rebuilt from their own
    catalog definitions afterwards, so the table ends up with exactly the
    migrated schema at a fraction of the cost of 10 million index inserts.
    """
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    with _loader(dsn) as conn:
        cons = conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype
            FROM pg_constraint c
            WHERE c.conrelid = ANY(%s::regclass[]) AND c.contype IN ('p', 'u', 'f')
            """,
            (list(_TABLES),),
        ).fetchall()
        idx = conn.execute(
            """
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i
            WHERE i.indrelid = ANY(%s::regclass[])
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            """,
            (list(_TABLES),),
        ).fetchall()
        # Foreign keys first (they depend on the primary key), then the rest.
        for table, name, _, _kind in sorted(cons, key=lambda c: c[3] != "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
        for name, _ in idx:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    half = n_rows // 2
    t = time.perf_counter()
    _both(
        dsn,
        _HEAP_INSERT,
        [{"accounts": accounts, "lo": 1, "hi": half}, {"accounts": accounts, "lo": half + 1, "hi": n_rows}],
    )
    say(f"    heap rows: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    _both(dsn, _DEVICE_INSERT, [{"part": 0}, {"part": 1}])
    say(f"    device rows: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    with _loader(dsn) as conn:
        for table, name, definition, _kind in sorted(cons, key=lambda c: c[3] == "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table),
                    sql.Identifier(name),
                    sql.SQL(definition),
                )
            )
        for _, definition in idx:
            conn.execute(definition)
        say(f"    constraints and indexes: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        conn.execute("ANALYZE sms_history")
        conn.execute("ANALYZE sms_history_device")
        conn.execute("CHECKPOINT")
        say(f"    analyze + checkpoint: {time.perf_counter() - t:.1f} s")
    return time.perf_counter() - started


def schema_fingerprint() -> str:
    """Changes whenever a migration does: a cached big table must have today's schema."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "sql" / "migrations"
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.sql")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def big_database(admin_dsn: str, n_rows: int, log: Any = None) -> tuple[str, str, str]:
    """The database with ``n_rows`` already in ``sms_history``: (name, dsn, how it was obtained).

    Loading 10 million rows costs minutes on a 2-core machine, so the loaded
    database is kept on the benchmark's server and reused while the migrations
    are unchanged; a schema change or another size builds it again.
    """
    import json

    name = f"bench_big_{n_rows}_{schema_fingerprint()}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        stale = conn.execute(
            # Same size, older schema: never useful again. Other sizes (--quick) stay.
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
            (f"bench_big_{n_rows}_", name),
        ).fetchall()
    for (old,) in stale:
        drop_database(admin_dsn, old)
    if row is not None and row[0]:
        meta = json.loads(row[0])
        if meta.get("complete"):
            return (
                name,
                dsn_for(admin_dsn, name),
                (f"loaded {meta['loaded_at']} in {meta['seconds']:.0f} s by an earlier run, reused"),
            )
    dsn = fresh_database(admin_dsn, name)
    seconds = bulk_load(dsn, n_rows, log=log)
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    meta_text = json.dumps({"complete": True, "loaded_at": stamp, "seconds": round(seconds, 1)})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(meta_text))
        )
    return name, dsn, f"bulk-loaded in this run in {seconds:.0f} s (setup, not measured)"
