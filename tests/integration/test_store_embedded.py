"""The embedded server wrapper: durable settings, a persistent data directory, clean shutdown."""

from __future__ import annotations

from pathlib import Path

import psycopg

from sync_worker import embedded, migrations


def test_embedded_server_is_durable_and_keeps_its_data_dir(tmp_path: Path) -> None:
    """With a data_dir the cluster keeps its data across stop/start; fsync and synchronous_commit are on."""
    data_dir = tmp_path / "pgdata"
    with embedded.server(data_dir) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')"
            ).fetchall()
        )
        assert settings == {"fsync": "on", "synchronous_commit": "on"}
        assert migrations.migrate(conn) == [m.version for m in migrations.available()]
    assert (data_dir / "PG_VERSION").is_file()
    with embedded.server(data_dir) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        assert migrations.migrate(conn) == []
        migrations.check_schema(conn)


def test_temporary_embedded_server_is_removed_on_exit() -> None:
    """Without a data_dir the server's directory is gone after the context exits."""
    with embedded.server() as dsn:
        host = psycopg.conninfo.conninfo_to_dict(dsn)["host"]
        assert isinstance(host, str)
        socket_dir = Path(host)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not socket_dir.exists()


def _postmaster_pid(dsn: str) -> int:
    """The pid of the server process now running behind ``dsn`` (first line of its postmaster.pid)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])


def _running(pid: int) -> bool:
    # An exited postmaster stays a zombie until init reaps it, which can come after pg_ctl returns:
    # a zombie is not a running server.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_server_restarted_by_restart_is_stopped_on_exit() -> None:
    """``embedded.restart`` gives the server a new postmaster; leaving ``server()`` stops that one too,
    instead of deleting the data directory under a server that goes on running."""
    with embedded.server() as dsn:
        before = _postmaster_pid(dsn)
        embedded.restart(dsn)
        after = _postmaster_pid(dsn)
        assert after != before
        assert _running(after)
    assert not _running(after)
