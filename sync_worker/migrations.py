"""Versioned schema migrations from ``sql/migrations/NNNN_name.sql``.

Each file is applied once, in version order, in its own transaction, and
recorded with its sha256 in ``schema_migrations``. An applied file that was
edited afterwards is refused: the database would no longer match the files.
A session-level advisory lock serialises concurrent ``migrate`` calls (two
replicas starting at once).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg
import psycopg.rows

from sync_worker import errors, queries

_Row = tuple[Any, ...]

# (namespace, key) for pg_advisory_lock(int, int); store's account locks use a
# different namespace, and the two-int form never collides with one-bigint locks.
LOCK_NAMESPACE: Final = 0x53_4D_53_4D  # "SMSM"
LOCK_KEY: Final = 1
_FILE_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    path: Path
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name

    def sql(self) -> LiteralString:
        # Migration files ship with the package; they are as trusted as source literals.
        return self.path.read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: str
    name: str
    applied_at: dt.datetime | None
    checksum_matches: bool | None  # None: applied but no longer shipped, or not applied


def available(directory: Path | None = None) -> list[Migration]:
    """The migrations shipped with this code, in version order."""
    directory = directory or queries.sql_root() / "migrations"
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.fullmatch(path.name)
        if match is None:
            raise errors.MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        version, name = match.groups()
        if version in found:
            raise errors.MigrationError(
                f"{path}: version {version} is also used by {found[version].filename}"
            )
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        found[version] = Migration(version, name, path, checksum)
    return [found[v] for v in sorted(found)]


def migrate(conn: psycopg.Connection[Any], directory: Path | None = None) -> list[str]:
    """Apply every missing migration; return the versions applied now."""
    shipped = available(directory)
    applied_now: list[str] = []
    with _wrapped(), _autocommit(conn), _migration_lock(conn):
        conn.execute(queries.get("create_table"))
        recorded = _applied(conn)
        _refuse_edited(shipped, recorded)
        for migration in shipped:
            if migration.version in recorded:
                continue
            try:
                with conn.transaction():
                    conn.execute(migration.sql())
                    conn.execute(
                        queries.get("record"),
                        {
                            "version": migration.version,
                            "name": migration.name,
                            "checksum": migration.checksum,
                        },
                    )
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise errors.MigrationError(f"migration {migration.filename} failed: {exc}") from exc
            applied_now.append(migration.version)
    return applied_now


WORD_SEARCH_INDEX: Final = "sms_message_text_trgm_idx"


def enable_word_search(conn: psycopg.Connection[Any]) -> bool:
    """Create the opt-in word-search index (pg_trgm GIN on ``sms_message.message``) if missing.

    True when it was created now, False when it was there already. Run after ``migrate`` (the
    table must exist); under the migration lock, so concurrent calls build it once. A server
    without pg_trgm (the contrib module), or a user that may not create it, is an
    ``errors.MigrationError`` that says which. The build blocks writers of the history while it
    runs (docs/schema.md "Finding messages by a word").
    """
    with _wrapped(), _autocommit(conn), _migration_lock(conn):
        cur = _cursor(conn)
        present = cur.execute(queries.get("word_search_enabled")).fetchone()
        if present is not None and present[0]:
            return False
        available = cur.execute(queries.get("word_search_available")).fetchone()
        if available is None or not available[0]:
            raise errors.MigrationError(
                "word search needs the pg_trgm extension, which this PostgreSQL server does not have "
                "installed (the contrib module: Debian/Ubuntu postgresql-contrib, the official images "
                "have it); the rest of the schema works without it"
            )
        try:
            with conn.transaction():
                conn.execute(queries.get("enable_word_search"))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise errors.MigrationError(
                f"word search could not be enabled (CREATE EXTENSION pg_trgm needs the database "
                f"owner or a superuser): {exc}"
            ) from exc
    return True


def check_schema(conn: psycopg.Connection[Any], directory: Path | None = None) -> None:
    """Raise ``errors.SchemaError`` unless every shipped migration is applied unchanged."""
    shipped = available(directory)
    with _wrapped(), _read(conn):
        exists = _cursor(conn).execute(queries.get("table_exists")).fetchone()
        recorded: dict[str, _Row] = {}
        if exists is not None and exists[0]:
            recorded = _applied(conn)
    try:
        _refuse_edited(shipped, recorded)
    except errors.MigrationError as exc:
        raise errors.SchemaError(str(exc)) from exc
    missing = [m.filename for m in shipped if m.version not in recorded]
    if missing:
        # The remedy first: readiness probes and one-line logs may cut a long message short.
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise errors.SchemaError(
            f"the database schema is older than this code needs; run `sync-worker migrate` (missing {shown})"
        )


def status(conn: psycopg.Connection[Any], directory: Path | None = None) -> list[MigrationStatus]:
    """Every shipped or recorded migration, applied or not."""
    shipped = {m.version: m for m in available(directory)}
    with _wrapped(), _read(conn):
        exists = _cursor(conn).execute(queries.get("table_exists")).fetchone()
        recorded = _applied(conn) if exists is not None and exists[0] else {}
    out: list[MigrationStatus] = []
    for version in sorted(set(shipped) | set(recorded)):
        m = shipped.get(version)
        r = recorded.get(version)
        out.append(
            MigrationStatus(
                version=version,
                name=m.name if m is not None else str(r[1]) if r is not None else "",
                applied_at=r[3] if r is not None else None,
                checksum_matches=(r[2] == m.checksum) if (m is not None and r is not None) else None,
            )
        )
    return out


def _refuse_edited(shipped: list[Migration], recorded: dict[str, _Row]) -> None:
    for migration in shipped:
        row = recorded.get(migration.version)
        if row is not None and row[2] != migration.checksum:
            raise errors.MigrationError(
                f"migration {migration.filename} was applied with checksum {row[2]} but the file now has "
                f"{migration.checksum}; applied migrations must never be edited (add a new one instead)"
            )


def _cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[_Row]:
    # Callers may hand over a connection with another row factory.
    return conn.cursor(row_factory=psycopg.rows.tuple_row)


def _applied(conn: psycopg.Connection[Any]) -> dict[str, _Row]:
    return {row[0]: row for row in _cursor(conn).execute(queries.get("applied")).fetchall()}


@contextmanager
def _wrapped() -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:
        raise errors.DatabaseUnavailableError(f"database unavailable during migration: {exc}") from exc
    except psycopg.Error as exc:
        raise errors.MigrationError(f"migration bookkeeping failed: {exc}") from exc


@contextmanager
def _autocommit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    # Each migration needs its own committed transaction; the lock must outlive them.
    previous = conn.autocommit
    if not previous:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise errors.MigrationError("migrate() needs a connection that is not inside a transaction")
        conn.autocommit = True
    try:
        yield
    finally:
        if not previous and not conn.closed:
            conn.autocommit = False


@contextmanager
def _migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    conn.execute(queries.get("lock"), {"namespace": LOCK_NAMESPACE, "key": LOCK_KEY})
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(queries.get("unlock"), {"namespace": LOCK_NAMESPACE, "key": LOCK_KEY})


@contextmanager
def _read(conn: psycopg.Connection[Any]) -> Iterator[None]:
    # A read on a non-autocommit connection must not leave a transaction open.
    if conn.autocommit:
        yield
    else:
        with conn.transaction():
            yield
