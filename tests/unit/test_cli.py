"""The CLI without a database: --help, argument and configuration errors, exit-code mapping."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sync_worker import cli, commands, errors, exitcodes, metrics, report, variables

API_ENV = {
    "SYNC_ACCOUNTS": "0252012345-00001",
    "THINGSPACE_CLIENT_ID": "client-id",
    "THINGSPACE_CLIENT_SECRET": "cli-client-secret-1",
    "THINGSPACE_USERNAME": "operator",
    "THINGSPACE_PASSWORD": "cli-password-1",
    "SYNC_LOG_FORMAT": "json",
}


def run(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    code = cli.main(argv, env=env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_documents_every_variable_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists every environment variable from variables.VARIABLES and every exit code."""
    code, out, _ = run(capsys, ["--help"], {})
    assert code == 0
    for var in variables.VARIABLES:
        assert var.name in out
    for number, _text in exitcodes.TABLE:
        assert f"  {number} " in out
    for command in (
        "migrate",
        "run",
        "once",
        "status",
        "cursor",
        "auth",
        "send",
        "start-delivery",
        "simulate",
    ):
        assert command in out


def test_subcommand_help_also_lists_variables(capsys: pytest.CaptureFixture[str]) -> None:
    """`once --help` documents its options and the variables too."""
    code, out, _ = run(capsys, ["once", "--help"], {})
    assert code == 0
    assert "--account" in out and "SYNC_ACCOUNTS" in out and "exit codes" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["once", "--bogus"], ["cursor"], ["cursor", "reset"], ["send", "--account", "abc"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Unknown commands, missing arguments and unknown options exit with code 2."""
    code, _, err = run(capsys, argv, {})
    assert code == 2
    assert "usage:" in err


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"SYNC_ACCOUNTS": "../etc"}, "SYNC_ACCOUNTS"),
        ({"SYNC_CONCURRENCY": "many"}, "SYNC_CONCURRENCY"),
        ({"THINGSPACE_PASSWORD": ""}, "THINGSPACE_PASSWORD"),
        ({"THINGSPACE_BASE_URL": "http://thingspace.verizon.com/api"}, "THINGSPACE_BASE_URL"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], overrides: dict[str, str], variable: str
) -> None:
    """`once` with an invalid setting exits 2 before any work, naming the variable, stdout untouched."""
    code, out, err = run(capsys, ["once"], {**API_ENV, **overrides})
    assert code == 2
    assert variable in err
    assert out == ""
    assert "cli-client-secret-1" not in err and "cli-password-1" not in err


def test_bad_account_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`once --account` with an invalid name is a usage error (2)."""
    code, _, err = run(capsys, ["once", "--account", "a/b"], API_ENV)
    assert code == 2 and "--account" in err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A --config file that does not exist exits 2."""
    code, _, err = run(capsys, ["--config", "/nonexistent/sync.toml", "status"], API_ENV)
    assert code == 2 and "--config" in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("argv", [["status"], ["once"], ["migrate"], ["cursor", "show"]])
def test_unreachable_database_exits_3_without_the_password(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """An unreachable database exits 3, names SYNC_DATABASE_URL, and never prints its password."""
    url = f"postgresql://sync:cli-db-secret-5@127.0.0.1:{_closed_port()}/sms"
    code, out, err = run(capsys, argv, {**API_ENV, "SYNC_DATABASE_URL": url})
    assert code == 3
    assert "SYNC_DATABASE_URL" in err
    assert "cli-db-secret-5" not in out + err


def test_send_validates_before_anything_else(capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid device or an over-long message is refused locally with exit 2 (nothing is sent)."""
    base = ["send", "--account", "0252012345-00001", "--message", "hi"]
    code, _, err = run(capsys, [*base, "--device", "imei"], API_ENV)
    assert code == 2 and "KIND:ID" in err
    code, _, err = run(capsys, [*base, "--device", "phone:123"], API_ENV)
    assert code == 2 and "kind" in err
    long_message = ["send", "--account", "0252012345-00001", "--device", "imei:1", "--message", "x" * 161]
    code, _, err = run(capsys, long_message, API_ENV)
    assert code == 2 and "160" in err


def test_cursor_reset_needs_yes_off_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --yes and without a terminal to ask on, cursor reset refuses (exit 2) and changes nothing."""
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    code, _, err = run(capsys, ["cursor", "reset", "--account", "0252012345-00001"], API_ENV)
    assert code == 2 and "--yes" in err


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.ConfigError("x"), 2),
        (errors.ValidationError("x"), 2),
        (errors.DatabaseUnavailableError("x"), 3),
        (errors.SchemaError("x"), 3),
        (errors.MigrationError("x"), 3),
        (errors.LoginGuardTrippedError("x"), 4),
        (errors.LoginFailedError("x", status=400), 4),
        (errors.AuthError("x", status=401), 4),
        (errors.ApiTransientError("x", status=503), 1),
        (errors.InvalidCursorError("x", status=400), 1),
    ],
)
def test_exit_code_mapping(error: errors.SyncWorkerError, expected: int) -> None:
    """Each error class maps to its documented exit code."""
    assert exitcodes.for_error(error) == expected


def _assert_not_imported(setup: str, modules: tuple[str, ...], must_load: tuple[str, ...] = ()) -> None:
    """Run ``setup`` in a fresh interpreter; none of ``modules`` may be loaded, all of ``must_load`` must."""
    code = (
        "import sys\n"
        f"{setup}\n"
        f"loaded = [m for m in {modules!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        f"missing = [m for m in {must_load!r} if m not in sys.modules]\n"
        "assert not missing, missing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_help_is_fast_and_light() -> None:
    """Building the parser imports neither the HTTP stack, the scheduler nor the simulator."""
    _assert_not_imported(
        "from sync_worker import cli\ncli.build_parser().format_help()",
        ("requests", "apscheduler", "sync_worker.simulator", "psycopg"),
    )


def test_once_loads_no_module_only_other_commands_need() -> None:
    """Loading the commands (what `once` imports) loads no scheduler, Prometheus, receiver or simulator."""
    _assert_not_imported(
        "from sync_worker import cli, commands\ncli.build_parser()",
        (
            "apscheduler",
            "prometheus_client",
            "sync_worker.scheduler",
            "sync_worker.metrics",
            "sync_worker.health",
            "sync_worker.receiver",
            "sync_worker.callbacks",
            "sync_worker.callback_metrics",
            "sync_worker.simulator",
            "sync_worker.demo",
            "sync_worker.embedded",
        ),
        # The check itself must see the modules `once` does load.
        must_load=("sync_worker.sync", "requests"),
    )


def test_only_the_process_own_command_line_freezes_the_start_up_objects() -> None:
    """`sync-worker` run from the process's own command line moves what it imported out of the
    collector's sight (cheap full collections and exit); a caller's argv (tests) freezes nothing."""
    code = (
        "import gc, sys\n"
        "from sync_worker import cli\n"
        "assert cli.main(['once'], env={}) == 2\n"
        "assert gc.get_freeze_count() == 0, gc.get_freeze_count()\n"
        "sys.argv = ['sync-worker', 'once']\n"
        "assert cli.main(env={}) == 2\n"
        "print(gc.get_freeze_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True
    )
    # Every module, class and function imported by then: tens of thousands of objects.
    assert int(done.stdout.strip()) > 10_000


def test_format_table_aligns_columns() -> None:
    """The status table pads every column to its widest cell and shows None as '-'."""
    text = report.table([{"a": "x", "b": None}, {"a": "longer", "b": 2}], ["a", "b"])
    lines = text.splitlines()
    assert lines[0].startswith("a       b")
    assert lines[2] == "x       -"
    assert lines[3] == "longer  2"


def test_progress_lines_per_block() -> None:
    """On a terminal `once` prints a cumulative progress line per committed block and still counts metrics."""
    out = io.StringIO()
    progress = metrics.ProgressMetrics(out)
    progress.block_committed("abc", 100, 90, 10, 0)
    progress.block_committed("abc", 50, 50, 0, 1)
    assert out.getvalue().splitlines() == [
        "  abc: block 1, 100 messages, 90 new",
        "  abc: block 2, 150 messages, 140 new",
    ]
    assert progress.messages_received.labels("abc")._value.get() == 150


def test_readme_documents_every_exit_code() -> None:
    """The README's exit-code table has exactly the codes and meanings the CLI uses."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for number, text in exitcodes.TABLE:
        assert f"| {number} | {text} |" in readme
    assert readme.startswith("# thingspace-sms-sync")
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[0].startswith("make run ") and first_block[1].startswith("make test ")


class _Exited(Exception):
    pass


def test_shutdown_timeout_exit_flushes_logs_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before os._exit (which skips interpreter flushing) buffered log handlers and streams are flushed."""
    order: list[str] = []

    class Buffered(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pass

        def flush(self) -> None:
            order.append("handler")

    class Stream(io.StringIO):
        def flush(self) -> None:
            order.append("stream")

    def fake_exit(code: int) -> None:
        order.append(f"exit {code}")
        raise _Exited

    handler = Buffered()
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(os, "_exit", fake_exit)
    try:
        with pytest.raises(_Exited):
            commands._flush_and_exit(1, Stream())
    finally:
        logging.getLogger().removeHandler(handler)
    assert order[-1] == "exit 1"
    assert "handler" in order and "stream" in order
    assert order.index("exit 1") > max(order.index("handler"), order.index("stream"))


def test_readme_links_the_operating_documents() -> None:
    """The README links operations (each anchor resolves), schema, benchmarks and reliability docs."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    for heading in (
        "## Deploying and operating",
        "## Schema for analysts",
        "## Benchmarks",
        "## Reliability",
    ):
        assert heading in readme
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", readme)
    targets = {path for path, _ in links}
    assert {"docs/operations.md", "docs/schema.md", "bench/README.md", "tests/README.md"} <= targets
    operations = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    for path, anchor in links:
        assert (root / path).is_file(), path
        if anchor:
            assert path == "docs/operations.md" and anchor in anchors, anchor
