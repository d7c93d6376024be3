"""`sync-worker --version`, and each `COMMAND --help` listing exactly the variables the command reads."""

from __future__ import annotations

import argparse
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_worker import cli, variables

ROOT = Path(__file__).resolve().parents[2]
ALL = {var.name for var in variables.VARIABLES}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command ("cursor show") with its parser."""
    if parser.get_default("func") is not None:
        yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))


LEAVES = dict(_leaves(cli.build_parser()))


def _listed(help_text: str) -> set[str]:
    return set(re.findall(r"^  ([A-Z][A-Z0-9_]+)  \[default: ", help_text, re.MULTILINE))


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`sync-worker --version` exits 0 and prints the version pyproject.toml declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli.main(["--version"], env={}) == 0
    assert capsys.readouterr().out == f"sync-worker {declared}\n"


def test_every_command_says_which_variables_it_reads() -> None:
    """COMMAND_VARIABLES names every command of the parser, and only real variables."""
    assert set(variables.COMMAND_VARIABLES) == set(LEAVES)
    for names in variables.COMMAND_VARIABLES.values():
        assert names <= ALL


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_command_help_lists_exactly_the_variables_it_reads(command: str) -> None:
    """`COMMAND --help` lists the variables the command reads, and no other; `--help` lists all."""
    text = LEAVES[command].format_help()
    assert _listed(text) == variables.COMMAND_VARIABLES[command]
    assert _listed(cli.build_parser().format_help()) == ALL


def _source(command: str) -> str:
    return inspect.getsource(cli.command_function(LEAVES[command].get_default("func")))


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_declared_variables_match_what_the_command_loads(command: str) -> None:
    """What a command's code loads (settings and logs, the database, credentials, the accounts,
    a metrics port) is in its declared variables; a command that loads no settings reads none of
    the database's or ThingSpace's."""
    source = _source(command)
    declared = variables.COMMAND_VARIABLES[command]
    if "ctx.settings(" not in source:
        assert declared <= {"SYNC_LOG_FORMAT"}
        return
    assert {"SYNC_LOG_FORMAT", "SYNC_LOG_LEVEL", "SYNC_DATABASE_URL", "SYNC_DATABASE_URL_FILE"} <= declared
    if "credentials=True" in source:
        assert {
            "THINGSPACE_CLIENT_ID",
            "THINGSPACE_USERNAME",
            "THINGSPACE_PASSWORD",
            "THINGSPACE_BASE_URL",
        } <= declared
    if "command_client(" in source or "run_pass(" in source or "run_daemon(" in source:
        assert "THINGSPACE_RETRY_MAX_ATTEMPTS" in declared
    if "run_pass(" in source:
        assert {"SYNC_METRICS_TEXTFILE", "SYNC_METRICS_PUSHGATEWAY"} <= declared
    if "accounts=True" in source or "account_names" in source or "_check_known(" in source:
        assert "SYNC_ACCOUNTS" in declared
    # app.run_daemon and app.receive serve /metrics, /healthz and /readyz on SYNC_METRICS_PORT.
    if "metrics_port" in source or "run_daemon(" in source or "app.receive(" in source:
        assert "SYNC_METRICS_PORT" in declared
    if "app.login_guard(" in source or "guard_problem(" in source or "guard_status(" in source:
        assert "SYNC_LOGIN_GUARD_THRESHOLD" in declared
