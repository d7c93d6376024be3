"""SIGTERM to the `sync-worker run` daemon in the middle of a long drain (the CLI as a subprocess)."""

from __future__ import annotations

import http.client
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from sync_worker import simulator
from tests.integration.test_cli_e2e import (
    ACCOUNTS,
    canonical,
    cli,
    distinct_backlog,
    start_daemon,
    stored,
    worker_env,
)

ACCOUNT = "0252012345-00001"
SHUTDOWN_TIMEOUT = 10.0


def test_sigterm_mid_drain_exits_in_time_with_the_cursor_at_a_committed_block(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """SIGTERM mid-drain: exit 0 in time; rows = acked blocks + the cursor's block; a rerun completes."""
    backlog = distinct_backlog(6000, seed=61)
    simulator.inject(ACCOUNT, backlog)
    # Latency per request stretches the 60-block drain to several seconds, so the signal lands inside it.
    simulator.faults.latency = 0.05
    env = worker_env(
        simulator,
        db_url,
        SYNC_ACCOUNTS=ACCOUNT,
        SYNC_SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_TIMEOUT),
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_JITTER_SECONDS="0",
    )
    proc, events = start_daemon(env)
    try:
        events.wait_for({"block_committed"})
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 0, not scheduler.EXIT_SHUTDOWN_TIMEOUT: the block in flight finished within the shutdown
    # timeout. A state, not a stopwatch, so a slow machine cannot fail it.
    assert code == 0
    runs = [json.loads(line) for line in events.rest() if '"account_run"' in line]
    assert [r["outcome"] for r in runs] == ["interrupted"]

    acked = simulator.acknowledged(ACCOUNT)
    rows = stored(db_url, ACCOUNT)
    assert 0 < len(rows) < len(backlog), "the signal did not land inside the drain"
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT next_token FROM sync_cursor WHERE account_name = %s", (ACCOUNT,)
        ).fetchone()
    assert row is not None and row[0] is not None
    token = row[0]
    # The cursor is the token of the last committed block, which nothing has acknowledged yet.
    assert token in simulator.issued_tokens(ACCOUNT)
    assert simulator.token_acks(ACCOUNT).get(token, 0) == 0
    pending = simulator.queued(ACCOUNT)[: simulator.config.block_size]
    assert rows == canonical(acked + pending)

    rerun = cli(env, "once")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert stored(db_url, ACCOUNT) == canonical(backlog)
    assert simulator.queued(ACCOUNT) == []


def _stalled_worker(sim: simulator.Simulator, db_url: str, command: str) -> subprocess.Popen[str]:
    """`command` running with its first history request held by the simulator (no answer for 120 s)."""
    sim.add_account(ACCOUNTS[0])
    sim.faults.timeout_seconds = 120.0
    sim.faults.script("history", ["timeout"])
    env = worker_env(sim, db_url, SYNC_ACCOUNTS=ACCOUNTS[0], THINGSPACE_READ_TIMEOUT="300")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sim.stats.wait_for("history_requests", 1, timeout=60), "the request never arrived"
    return proc


@pytest.mark.parametrize("command", ["once", "run"])
def test_second_ctrl_c_aborts_with_a_request_in_flight(
    simulator: simulator.Simulator, db_url: str, command: str
) -> None:
    """A second SIGINT ends the process with 130 while its history request is still unanswered."""
    proc = _stalled_worker(simulator, db_url, command)
    assert proc.stderr is not None
    err_lines: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr

    def read_stderr() -> None:
        for line in stderr:
            err_lines.put(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        proc.send_signal(signal.SIGINT)
        # Two signals sent back to back can reach Python as one: the second waits for the first's notice.
        while "Ctrl-C again" not in err_lines.get(timeout=30):
            pass
        proc.send_signal(signal.SIGINT)
        # Bounded far below the 120 s the simulator holds the request: the abort did not wait for it.
        code = proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)  # the pipe is at its end: every line is queued
    rest = []
    while not err_lines.empty():
        rest.append(err_lines.get())
    assert code == 130, rest
    assert any("second Ctrl-C" in line for line in rest)
    assert simulator.stats.history_requests == 1


def test_sigterm_while_the_daemon_starts_is_a_clean_stop(simulator: simulator.Simulator, db_url: str) -> None:
    """SIGTERM after the health server answers but before the daemon's loops run (its start-up writes
    wait on a lock here) stops it cleanly: exit 0 once the start-up finishes, not death by the signal."""
    port = _free_port()
    env = worker_env(simulator, db_url, SYNC_ACCOUNTS=ACCOUNT, SYNC_METRICS_PORT=str(port))
    with psycopg.connect(db_url) as blocker:
        # The daemon's first registration of its accounts waits for this lock: start-up is held open.
        blocker.execute("LOCK TABLE sync_schedule IN ACCESS EXCLUSIVE MODE")
        proc, _ = start_daemon(env)
        try:
            _wait_for_probe(port, proc)
            proc.send_signal(signal.SIGTERM)
            blocker.rollback()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_probe(port: int, proc: subprocess.Popen[str]) -> None:
    """Until the health server answers /healthz at all (any status)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon ended before its health server answered"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            threading.Event().wait(0.05)
        finally:
            conn.close()
    raise AssertionError("the daemon's health server never answered")
