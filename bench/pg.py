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


def bulk_load(dsn: str, n_rows: int, accounts: int = 20) -> float:
    """Fill ``sms_history`` (and its device rows) with ``n_rows`` realistic rows; return seconds.

    Constraints and indexes are dropped for the load and rebuilt from their own
    catalog definitions afterwards, so the table ends up with exactly the
    migrated schema, at a fraction of the cost of 10 million index inserts.
    Only this loader session turns synchronous_commit off: the load is setup,
    not a measured write.
    """
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET work_mem = '256MB'")
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
        for table, name, _, kind in sorted(cons, key=lambda c: c[3] != "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
            del kind
        for name, _ in idx:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        conn.execute(
            """
            INSERT INTO sms_history (account_name, message_key, occurrence, device_ids, device_kind,
                                     device_id, device_count, message, received_at, timestamp_raw,
                                     raw_json, raw, problems, first_stored_at, run_id)
            SELECT acct, key, 0, dev, 'imei', devid, 1, msg, ts,
                   to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   raw::text, raw, '{}', now(), NULL
            FROM (
                SELECT 'bulk-' || lpad((i %% %s::int)::text, 4, '0') AS acct,
                       encode(sha256(('bulk-' || i)::bytea), 'hex') AS key,
                       jsonb_build_array(jsonb_build_object('id', lpad((i %% 50000)::text, 15, '0'),
                                                            'kind', 'imei')) AS dev,
                       lpad((i %% 50000)::text, 15, '0') AS devid,
                       'reading ' || i || ' temp=' || (i %% 40) || ' batt=' || (i %% 100) AS msg,
                       timestamptz '2024-01-01 00:00:00+00' + i * interval '3 seconds' AS ts,
                       i
                FROM generate_series(1, %s::int) AS i
            ) g
            CROSS JOIN LATERAL (
                SELECT jsonb_build_object('deviceIds', g.dev, 'message', g.msg,
                                          'timestamp', to_char(g.ts AT TIME ZONE 'UTC',
                                                               'YYYY-MM-DD"T"HH24:MI:SS"Z"')) AS raw
            ) r
            """,
            (accounts, n_rows),
        )
        conn.execute(
            """
            INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id,
                                            received_at)
            SELECT id, 0, account_name, device_kind, device_id, received_at FROM sms_history
            """
        )
        for table, name, definition, kind in sorted(cons, key=lambda c: c[3] == "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table),
                    sql.Identifier(name),
                    sql.SQL(definition),  # type: ignore[arg-type]
                )
            )
            del kind
        for _, definition in idx:
            conn.execute(definition)  # type: ignore[call-overload]
        conn.execute("VACUUM ANALYZE sms_history")
        conn.execute("VACUUM ANALYZE sms_history_device")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started
