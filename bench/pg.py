"""The benchmark's Postgres: the embedded default (durable), fresh databases, the big table.

``SYNC_BENCH_DATABASE_URL`` points the run at another server instead (its
settings are printed with the table, whatever they are).
"""

from __future__ import annotations

import contextlib
import os
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


def fresh_database(admin_dsn: str, name: str, template: str = TEMPLATE) -> str:
    """Drop ``name`` if present, clone ``template`` (default: the migrated one) into it, return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
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


def _loader(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    # Setup, not a measured write: this session alone skips the commit flush.
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute("SET work_mem = '128MB'")
    return conn


def schema_fingerprint() -> str:
    """Changes whenever a migration does: a cached big table must have today's schema."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "sql" / "migrations"
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.sql")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]
