"""`sync-worker simulate` as a command: its documented defaults and a port it cannot listen on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sync_worker import cli, simulator

ROOT = Path(__file__).resolve().parents[2]


def _simulate_defaults() -> dict[str, object]:
    parser = cli.build_parser()
    return vars(parser.parse_args(["simulate"]))


def test_simulate_defaults_are_the_simulator_defaults() -> None:
    """The defaults `simulate --help` shows are the ones the simulator itself uses."""
    args = _simulate_defaults()
    assert args["host"] == simulator.DEFAULT_HOST
    assert args["port"] == simulator.DEFAULT_PORT
    assert args["seed_messages"] == simulator.DEFAULT_SEED_MESSAGES
    assert str(args["accounts"]).split(",") == list(simulator.DEFAULT_ACCOUNTS)
    assert args["block_size"] == simulator.SimConfig().block_size


def test_simulate_help_shows_the_port_and_message_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate --help` prints the default port and number of seeded messages."""
    assert cli.main(["simulate", "--help"], env={}) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {simulator.DEFAULT_PORT})" in out
    assert f"(default: {simulator.DEFAULT_SEED_MESSAGES})" in out


def test_simulate_on_a_busy_port_exits_2_with_one_line() -> None:
    """A port another process listens on: exit 2 and one `sync-worker: error:` line naming the
    address on stderr (no traceback), nothing on stdout (a sourced env file stays empty)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_"))}
        env["SYNC_LOG_FORMAT"] = "console"  # as on a terminal (JSON logs add a command_failed event)
        ran = subprocess.run(
            [sys.executable, "-m", "sync_worker", "simulate", "--port", str(port), "--seed-messages", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert ran.returncode == 2, ran.stderr
    assert ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("sync-worker: error: ")
    assert f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


def test_simulate_refuses_an_unknown_traffic_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate --traffic` with a shape it does not know is a usage error (exit 2) naming the known
    shapes, before anything listens or is printed on stdout."""
    assert cli.main(["simulate", "--port", "0", "--traffic", "weekend"], env={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown traffic shape 'weekend'" in captured.err and "mixed" in captured.err
