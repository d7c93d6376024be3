"""Every database error names the database the command used (host, port, dbname, user; never the
password), and says so when no database was configured and libpq's defaults chose it."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from sync_worker import cli

API_ENV = {
    "SYNC_ACCOUNTS": "0252012345-00001",
    "THINGSPACE_BASE_URL": "http://127.0.0.1:9/api",
    "THINGSPACE_ALLOW_INSECURE_LOOPBACK": "1",
    "THINGSPACE_CLIENT_ID": "client-id",
    "THINGSPACE_CLIENT_SECRET": "named-client-secret-1",
    "THINGSPACE_USERNAME": "operator",
    "THINGSPACE_PASSWORD": "named-password-1",
    "SYNC_LOG_FORMAT": "console",
}

COMMANDS = [
    ["status"],
    ["once"],
    ["cursor", "show"],
    ["quarantine", "list"],
    ["accounts", "list"],
    ["retention", "--days", "30"],
    ["callbacks", "kept"],
]


def _named(url: str) -> list[str]:
    params = psycopg.conninfo.conninfo_to_dict(url)
    return [f"dbname={params['dbname']}", f"user={params.get('user') or ''}", "host=", "port="]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_an_outdated_schema_error_names_the_database(
    capsys: pytest.CaptureFixture[str], make_database: Callable[..., str], argv: list[str]
) -> None:
    """A command on an unmigrated database exits 3 with "run `sync-worker migrate`" and the
    database it would migrate (dbname, user, host, port), never the password."""
    url = make_database(migrated=False)
    assert cli.main(argv, env={**API_ENV, "SYNC_DATABASE_URL": url}) == 3
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert "sync-worker migrate" in line and "[database: " in line
    for part in _named(url):
        assert part in line, line
    password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    if password:
        assert str(password) not in err


def test_with_no_database_configured_the_error_says_libpq_chose_it(
    capsys: pytest.CaptureFixture[str], make_database: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SYNC_DATABASE_URL unset: the PG* variables choose the database, and the error names that
    database and says SYNC_DATABASE_URL is not set (following "run migrate" blindly would migrate it)."""
    url = make_database(migrated=False)
    params = psycopg.conninfo.conninfo_to_dict(url)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("password", "PGPASSWORD")):
        if params.get(key):
            monkeypatch.setenv(var, str(params[key]))
    monkeypatch.setenv("PGDATABASE", str(params["dbname"]))
    assert cli.main(["status"], env={"SYNC_LOG_FORMAT": "console"}) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert f"dbname={params['dbname']}" in line
    assert "SYNC_DATABASE_URL is not set" in line
