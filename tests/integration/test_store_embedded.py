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
