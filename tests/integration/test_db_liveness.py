"""Database connections probe their TCP peer on both ends, so a cut-off replica's locks go within a minute."""

from __future__ import annotations

import os

import psycopg
import pytest

from sync_worker import db as database

# The embedded server listens on a Unix socket only, where these settings read as zero; a TCP
# server is needed (the suite's default second server, or SYNC_TEST_DATABASE_URL when it is TCP).
_TCP_URL = os.environ.get("SYNC_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


def _tcp_or_skip() -> str:
    try:
        with psycopg.connect(_TCP_URL, connect_timeout=3) as conn:
            if conn.info.host.startswith("/"):
                pytest.skip("SYNC_TEST_DATABASE_URL is a Unix socket")
    except psycopg.OperationalError:
        pytest.skip("no TCP Postgres reachable")
    return _TCP_URL


def test_worker_connections_keep_alive_and_time_out_on_both_ends() -> None:
    """The server drops a silent session (and its advisory locks) within ~35-45 s; so does the client."""
    url = _tcp_or_skip()
    with database.connector(url)() as conn:
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
            )
        }
        client = conn.info.get_parameters()
    assert shown == {
        "tcp_keepalives_idle": "15",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "4",
        "tcp_user_timeout": "45000",
    }
    assert (client.get("keepalives_idle"), client.get("tcp_user_timeout")) == ("15", "45000")


def test_settings_in_the_url_win() -> None:
    """An operator's own keepalive settings and options are kept, not overwritten."""
    dsn = database.with_liveness("host=db keepalives_idle=60 options='-c tcp_keepalives_idle=60'")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    assert params["keepalives_idle"] == "60" and params["options"] == "-c tcp_keepalives_idle=60"
    assert params["tcp_user_timeout"] == "45000"
