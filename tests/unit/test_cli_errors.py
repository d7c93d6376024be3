"""Every command fails in one form: one `sync-worker: error:` line on stderr, and a `command_failed`
event only when the logs are JSON; database errors name the database."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import prometheus_client
import pytest

from sync_worker import app, callback_metrics, cli, config, db, errors, variables

ROOT = Path(__file__).resolve().parents[2]

API_ENV = {
    "SYNC_ACCOUNTS": "0252012345-00001",
    "THINGSPACE_CLIENT_ID": "client-id",
    "THINGSPACE_CLIENT_SECRET": "errors-client-secret-1",
    "THINGSPACE_USERNAME": "operator",
    "THINGSPACE_PASSWORD": "errors-password-1",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _failures(tmp_path: Path) -> list[tuple[list[str], dict[str, str], int]]:
    """(argv, env, exit code) of failures of several kinds in several commands."""
    unreachable = f"postgresql://sync:errors-db-secret-5@127.0.0.1:{_closed_port()}/sms"
    return [
        # configuration refused while loading the settings
        (["once"], {**API_ENV, "SYNC_CONCURRENCY": "many"}, 2),
        (["send", "--account", "0252012345-00001", "--device", "imei:1", "--message", "x"], {}, 2),
        # an option refused before any settings are loaded
        (["cursor", "reset", "--account", "a/b", "--yes"], {}, 2),
        (["once", "--account", "a/b"], API_ENV, 2),
        # the database unreachable
        (["status"], {**API_ENV, "SYNC_DATABASE_URL": unreachable}, 3),
        (["migrate"], {"SYNC_DATABASE_URL": unreachable}, 3),
        (["quarantine", "list"], {"SYNC_DATABASE_URL": unreachable}, 3),
        (["retention", "--days", "0"], {"SYNC_DATABASE_URL": unreachable}, 2),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_failure_is_one_error_line_with_console_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: int
) -> None:
    """With console logs every failing command writes exactly one line to stderr,
    `sync-worker: error: MESSAGE`, and nothing to stdout; no secret in it."""
    argv, env, code = _failures(tmp_path)[case]
    assert cli.main(argv, env={**env, "SYNC_LOG_FORMAT": "console"}) == code
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sync-worker: error: ")
    assert "errors-db-secret-5" not in err and "errors-password-1" not in err


@pytest.mark.parametrize("case", range(8))
def test_a_failure_is_one_json_event_then_the_error_line_with_json_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: int
) -> None:
    """With JSON logs (explicit, or `auto` off a terminal) the same failures add exactly one
    `command_failed` event (message, kind, exit code) before the same last line, whether the
    command failed before or after loading its settings."""
    argv, env, code = _failures(tmp_path)[case]
    for fmt in ("json", "auto"):
        assert cli.main(argv, env={**env, "SYNC_LOG_FORMAT": fmt}) == code
        out, err = capsys.readouterr()
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 2, err
        event = json.loads(lines[0])
        assert event["event"] == "command_failed" and event["exit_code"] == code
        assert lines[1] == f"sync-worker: error: {event['error']}"
        assert "errors-db-secret-5" not in err and "errors-password-1" not in err


def test_describe_names_what_libpq_would_connect_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database description resolves what the URL leaves out from the PG* variables, and
    never shows the password."""
    monkeypatch.setenv("PGHOST", "db.example.net")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "analyst")
    monkeypatch.setenv("PGDATABASE", "warehouse")
    assert db.describe("postgresql://sync:pw-77@pg:5433/sms") == "host=pg port=5433 dbname=sms user=sync"
    assert db.describe("dbname=sms") == "host=db.example.net port=6543 dbname=sms user=analyst"
    assert "pw-77" not in db.describe("host=pg password=pw-77")


def test_describe_of_an_unset_url_says_libpq_defaults_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SYNC_DATABASE_URL and no PGDATABASE: libpq picks a database named like the user (the
    trial's `root`); the description names it and says that nothing was configured."""
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE", "PGHOSTADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGUSER", "root")
    text = db.describe("")
    assert "dbname=root user=root" in text
    assert "host=(local socket)" in text
    assert "SYNC_DATABASE_URL is not set" in text


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_doctor_prints_its_report_then_the_one_error_line(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """A failing doctor keeps its report on stdout and then fails in the one form: the last stderr
    line names every failed check, the most basic first, and JSON logs get one `command_failed` event
    with doctor's exit code."""
    unreachable = f"postgresql://sync:errors-db-secret-5@127.0.0.1:{_closed_port()}/sms"
    env = {
        "SYNC_DATABASE_URL": unreachable,
        "THINGSPACE_PASSWORD": "errors-password-1",
        "SYNC_LOG_FORMAT": fmt,
    }
    assert cli.main(["doctor"], env=env) == 2  # the configuration (no client id) before the database
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("check ") and "exit 2" in out
    lines = err.splitlines()
    assert len(lines) == (2 if fmt == "json" else 1), err
    assert lines[-1].startswith("sync-worker: error: doctor: 2 check(s) failed: configuration: ")
    assert "; database: SYNC_DATABASE_URL: cannot connect to host=127.0.0.1" in lines[-1]
    if fmt == "json":
        event = json.loads(lines[0])
        assert event["event"] == "command_failed" and event["exit_code"] == 2
        assert lines[1] == f"sync-worker: error: {event['error']}"
    assert "errors-db-secret-5" not in out + err and "errors-password-1" not in out + err


# The commands with no data of their own: their log stream is stdout (README "Logs", the
# SYNC_LOG_FORMAT variable, docs/operations.md "stdout is data, stderr is logs").
DAEMONS = ("run", "receive")
DAEMON_ENV = {
    **API_ENV,
    "SYNC_CALLBACK_USERNAME": "errors-callback-user",
    "SYNC_CALLBACK_PASSWORD": "errors-callback-secret-1234",
}


@pytest.mark.parametrize("command", DAEMONS)
def test_a_daemon_logs_its_failure_on_stdout_and_the_error_line_on_stderr(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`run` and `receive` log to stdout (where Docker, Kubernetes and the journal collect them): their
    `command_failed` event goes there, and stderr still ends with the one `sync-worker: error:` line."""
    unreachable = f"postgresql://sync:errors-db-secret-5@127.0.0.1:{_closed_port()}/sms"
    env = {**DAEMON_ENV, "SYNC_DATABASE_URL": unreachable, "SYNC_LOG_FORMAT": "json"}
    assert cli.main([command], env=env) == 3
    out, err = capsys.readouterr()
    (event,) = [json.loads(line) for line in out.splitlines() if '"command_failed"' in line]
    assert event["exit_code"] == 3
    assert err.splitlines() == [f"sync-worker: error: {event['error']}"]
    assert "errors-db-secret-5" not in out + err


def test_the_docs_name_the_daemons_as_the_commands_logging_to_stdout() -> None:
    """Every place that says where the logs go names both daemons, and says that the other
    commands log to stderr."""
    readme = (ROOT / "README.md").read_text()
    logs_section = readme.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    operations = (ROOT / "docs" / "operations.md").read_text()
    ground_rule = operations.split("**stdout is data, stderr is logs.**", 1)[1].split("\n- **", 1)[0]
    (log_format,) = [v.description for v in variables.VARIABLES if v.name == "SYNC_LOG_FORMAT"]
    for text in (logs_section, ground_rule, log_format):
        flat = " ".join(text.split())
        assert "daemons (`run`, `receive`)" in flat, flat
        assert "stderr" in flat


def test_the_readme_shows_the_form_an_unreachable_database_is_named_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable database is named as the README says, `SYNC_DATABASE_URL: cannot connect to
    host=H port=P dbname=D user=U: ...` (the `[database: ...]` suffix is for the other errors, see
    tests/integration/test_database_named.py)."""
    port = _closed_port()
    env = {**API_ENV, "SYNC_DATABASE_URL": f"postgresql://sync:errors-db-secret-5@127.0.0.1:{port}/sms"}
    assert cli.main(["status"], env={**env, "SYNC_LOG_FORMAT": "console"}) == 3
    _, err = capsys.readouterr()
    named = f"host=127.0.0.1 port={port} dbname=sms user=sync"
    shown = f"sync-worker: error: SYNC_DATABASE_URL: cannot connect to {named}: "
    assert err.startswith(shown), err
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`SYNC_DATABASE_URL: cannot connect to host=H port=P dbname=D user=U: ...`" in readme
    assert "`[database: host=H port=P dbname=D user=U]`" in readme


def test_the_commands_that_require_sync_accounts_are_those_its_doc_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SYNC_ACCOUNTS's documented "(required for ...)" names exactly the commands that refuse to start
    without it, and `once --account A` (which its description exempts) gets past the configuration."""
    (documented,) = [v.default for v in variables.VARIABLES if v.name == "SYNC_ACCOUNTS"]
    match = re.fullmatch(r"\(required for ([a-z/]+)\)", documented)
    assert match is not None, documented
    unreachable = f"postgresql://sync:errors-db-secret-5@127.0.0.1:{_closed_port()}/sms"
    env = {k: v for k, v in DAEMON_ENV.items() if k != "SYNC_ACCOUNTS"}
    env.update(SYNC_DATABASE_URL=unreachable, SYNC_LOG_FORMAT="console")
    documented_commands = match.group(1).split("/")
    refusing = set()
    for command in ("run", "receive", "once", "status", "migrate", "retention", "accounts"):
        argv = [command, "list"] if command == "accounts" else [command]
        code = cli.main(argv, env=env)
        _, err = capsys.readouterr()
        if "SYNC_ACCOUNTS is required" in err:
            assert code == 2
            refusing.add(command)
    assert refusing == set(documented_commands)
    # doctor reports it as its configuration check, naming the same commands.
    assert cli.main(["doctor", "--no-history"], env=env) == 2
    out, _ = capsys.readouterr()
    (line,) = [line for line in out.splitlines() if line.startswith("configuration")]
    named = f"{', '.join(documented_commands[:-1])} and {documented_commands[-1]}"
    assert f"SYNC_ACCOUNTS is required by {named}" in line
    assert cli.main(["once", "--account", "0252012345-00001"], env=env) == 3  # the database, not the config
    assert "SYNC_ACCOUNTS" not in capsys.readouterr().err


def test_the_commands_that_require_the_callback_credentials_are_those_their_doc_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SYNC_CALLBACK_USERNAME / _PASSWORD's "(required for ...)" names exactly the commands refusing
    without them: `receive` (its receiver is not built) and `callbacks register`; `callbacks list` and
    `remove` go on to the database (unreachable here: exit 3)."""
    for name in ("SYNC_CALLBACK_USERNAME", "SYNC_CALLBACK_PASSWORD"):
        (documented,) = [v.default for v in variables.VARIABLES if v.name == name]
        assert documented == "(required for receive/callbacks register)"
    account = "0252012345-00001"
    env = {
        **API_ENV,
        "SYNC_DATABASE_URL": f"postgresql://sync:errors-db-secret-5@127.0.0.1:{_closed_port()}/sms",
        "SYNC_CALLBACK_URL": "https://sms-callbacks.example.com",
        "SYNC_LOG_FORMAT": "console",
    }
    # `receive` checks the database first, then builds its receiver: the part that needs them.
    settings = config.load(env, None, require_credentials=False, require_accounts=True)
    with pytest.raises(errors.ConfigError, match="SYNC_CALLBACK_USERNAME and SYNC_CALLBACK_PASSWORD"):
        app.callback_receiver(
            settings,
            app.connector(settings),
            callback_metrics.CallbackMetrics(prometheus_client.CollectorRegistry()),
        )
    refusing = {"receive"}
    for command in ("register", "list", "remove"):
        code = cli.main(["callbacks", command, "--account", account], env=env)
        _, err = capsys.readouterr()
        if "SYNC_CALLBACK_USERNAME and SYNC_CALLBACK_PASSWORD" in err:
            assert code == 2
            refusing.add(f"callbacks {command}")
        else:
            assert code == 3, err  # the database, not the configuration
    assert refusing == {"receive", "callbacks register"}
