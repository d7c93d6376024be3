"""Migrations on a real server: versions, checksums, concurrency."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_worker import errors, migrations, queries
from tests.fixtures import database


def _copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(queries.sql_root() / "migrations", target)
    return target


def test_migrate_applies_everything_once(make_database: Callable[..., str]) -> None:
    """A fresh database gets every shipped migration; a second migrate applies nothing."""
    url = make_database(migrated=False)
    shipped = [m.version for m in migrations.available()]
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrations.migrate(conn) == shipped
        assert migrations.migrate(conn) == []
        migrations.check_schema(conn)
        recorded = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.checksum) for m in migrations.available()]


def test_check_schema_refuses_an_old_database(make_database: Callable[..., str]) -> None:
    """check_schema on an unmigrated database raises SchemaError telling the operator to run migrate."""
    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(errors.SchemaError) as info:
        migrations.check_schema(conn)
    assert "sync-worker migrate" in str(info.value)
    assert "0001_history_store.sql" in str(info.value)


def test_check_schema_refuses_a_missing_newer_migration(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Code that ships a migration the database lacks refuses to run on it."""
    url = make_database()
    directory = _copy_migrations(tmp_path)
    (directory / "9999_newer.sql").write_text("CREATE TABLE newer (id int);\n")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.SchemaError, match=r"9999_newer\.sql"):
            migrations.check_schema(conn, directory)
        assert migrations.migrate(conn, directory) == ["9999"]
        migrations.check_schema(conn, directory)
        statuses = migrations.status(conn, directory)
    shipped = [(m.version, True) for m in migrations.available()]
    assert [(s.version, s.checksum_matches) for s in statuses] == [*shipped, ("9999", True)]


def test_existing_database_at_0001_is_upgraded(make_database: Callable[..., str], tmp_path: Path) -> None:
    """A database built at 0001 is refused by check_schema, then migrate brings it up keeping its data
    (a recorded failed-login count included: an upgrade must never forget one)."""
    url = make_database(migrated=False)
    only_0001 = tmp_path / "only_0001"
    only_0001.mkdir()
    shutil.copy(queries.sql_root() / "migrations" / "0001_history_store.sql", only_0001)
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrations.migrate(conn, only_0001) == ["0001"]
        conn.execute(
            "INSERT INTO sync_run (account_name, worker_host, worker_pid, blocks) VALUES ('acct', 'h', 1, 3)"
        )
        conn.execute("INSERT INTO sync_cursor (account_name, next_token) VALUES ('acct', 'tok')")
        conn.execute(
            "INSERT INTO login_guard (principal, fingerprint, consecutive_failures) VALUES ('user', 'f', 2)"
        )
        with pytest.raises(errors.SchemaError, match=r"sync-worker migrate.*0002_quarantine\.sql"):
            migrations.check_schema(conn)
        later = [m.version for m in migrations.available() if m.version > "0001"]
        assert migrations.migrate(conn) == later
        migrations.check_schema(conn)
        assert conn.execute("SELECT blocks, quarantined FROM sync_run").fetchall() == [(3, 0)]
        assert conn.execute("SELECT next_token FROM sync_cursor").fetchall() == [("tok",)]
        assert conn.execute("SELECT count(*) FROM sms_quarantine").fetchone() == (0,)
        assert conn.execute("SELECT username, consecutive_failures FROM login_guard").fetchall() == [
            ("user", 2)
        ]


def test_edited_migration_is_refused(make_database: Callable[..., str], tmp_path: Path) -> None:
    """Editing an applied migration makes migrate raise MigrationError naming the file, and nothing runs."""
    url = make_database(migrated=False)
    directory = _copy_migrations(tmp_path)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, directory)
        edited = directory / "0001_history_store.sql"
        edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
        (directory / "9002_more.sql").write_text("CREATE TABLE should_not_exist (id int);\n")
        with pytest.raises(errors.MigrationError, match=r"0001_history_store\.sql"):
            migrations.migrate(conn, directory)
        assert conn.execute("SELECT to_regclass('should_not_exist')").fetchone() == (None,)
        with pytest.raises(errors.SchemaError, match=r"0001_history_store\.sql"):
            migrations.check_schema(conn, directory)


def test_failing_migration_rolls_back_and_is_not_recorded(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """A migration that fails leaves no half-applied changes and no schema_migrations row."""
    url = make_database()
    directory = _copy_migrations(tmp_path)
    (directory / "9002_broken.sql").write_text("CREATE TABLE half (id int);\nSELECT no_such_function();\n")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.MigrationError, match=r"9002_broken\.sql"):
            migrations.migrate(conn, directory)
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = '9002'").fetchone() == (
            0,
        )


def _migrate_in_child(url: str, directory: str, results: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        results.put(migrations.migrate(conn, Path(directory)))


def test_concurrent_migrate_applies_each_migration_once(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """Two processes migrating the same database at once apply every migration exactly once."""
    url = make_database(migrated=False)
    directory = _copy_migrations(tmp_path)
    (directory / "9002_counter.sql").write_text(
        "CREATE TABLE applied_count (n int);\nINSERT INTO applied_count VALUES (1);\n"
    )
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with psycopg.connect(url, autocommit=True) as holder:
        # Hold the migration lock so both children queue up behind it, then let them race.
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (migrations.LOCK_NAMESPACE, migrations.LOCK_KEY))
        children = [
            ctx.Process(target=_migrate_in_child, args=(url, str(directory), results)) for _ in range(2)
        ]
        for child in children:
            child.start()
        deadline = time.monotonic() + 60
        while True:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (migrations.LOCK_KEY,),
            ).fetchone()
            if waiting == (2,):
                break
            assert time.monotonic() < deadline, "children never reached the migration lock"
            holder.execute("SELECT pg_sleep(0.02)")
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", (migrations.LOCK_NAMESPACE, migrations.LOCK_KEY))
        outcomes = sorted([results.get(timeout=60), results.get(timeout=60)])
        for child in children:
            child.join(timeout=60)
            assert child.exitcode == 0
        shipped = [m.version for m in migrations.available()]
        assert outcomes == [[], [*shipped, "9002"]]
        assert holder.execute("SELECT count(*) FROM applied_count").fetchone() == (1,)
        assert holder.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(shipped) + 1,)


def test_0009_merges_a_users_rows_into_one_that_never_counts_lower(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """0003-layout rows of one user under several base URL spellings and letter cases become one row per
    case-folded user: counts added (never below the highest), failed fingerprints united, the longest live
    lease kept and the other in-flight login's credentials remembered as failed."""
    url = make_database(migrated=False)
    before = database.migrations_before(tmp_path, "0009")
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn, before)
        conn.execute(
            """
            INSERT INTO login_guard (base_url, username, consecutive_failures, failed_fingerprints,
                                     last_outcome, last_attempt_at, last_failure_at, last_error, tripped_at,
                                     pending_attempt, pending_fingerprint, pending_until, pending_holder)
            VALUES ('http://127.0.0.1:1/api', 'ops', 2, '{fp-a}', 'refused',
                    '2024-01-01T10:00Z', '2024-01-01T10:00Z', 'first', NULL, NULL, NULL, NULL, NULL),
                   ('http://localhost:1/api', 'Ops', 1, '{fp-b}', 'unknown',
                    '2024-01-01T11:00Z', '2024-01-01T11:00Z', 'latest', '2024-01-01T11:30Z',
                    '00000000-0000-0000-0000-000000000001', 'fp-short', now() + interval '10 s', 'h:1'),
                   ('http://LOCALHOST:1/api', 'OPS', 1, '{fp-a}', 'refused',
                    '2024-01-01T09:00Z', '2024-01-01T09:00Z', 'old', '2024-01-01T09:30Z',
                    '00000000-0000-0000-0000-000000000002', 'fp-long', now() + interval '90 s', 'h:2'),
                   ('', 'ops', 0, '{}', 'refused', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                   ('http://127.0.0.1:1/api', 'someone-else', 3, '{fp-x}', 'refused',
                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
            """
        )
        assert migrations.migrate(conn) == [m.version for m in migrations.available() if m.version >= "0009"]
        rows = conn.execute(
            "SELECT username, consecutive_failures, failed_fingerprints, last_outcome, last_error, "
            "tripped_at = '2024-01-01T09:30Z', pending_attempt::text, pending_fingerprint, pending_holder "
            "FROM login_guard ORDER BY username"
        ).fetchall()
    assert rows == [
        (
            "ops",
            4,  # 2 + 1 + 1 (+ 0): above the highest single count (2), as the vendor may have counted
            ["fp-a", "fp-b", "fp-short"],
            "unknown",
            "latest",
            True,
            "00000000-0000-0000-0000-000000000002",
            "fp-long",
            "h:2",
        ),
        ("someone-else", 3, ["fp-x"], "refused", None, None, None, None, None),
    ]
