"""README's "Trying it against the simulator", run word for word in bash (only the database URL of its
first line replaced by a test server's, naming a database that does not exist yet)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sync_worker import simulator
from tests.fixtures.database import DatabaseServer

ROOT = Path(__file__).resolve().parents[2]


def _block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Trying it against the simulator", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return str(block).splitlines()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _script(url: str) -> str:
    lines = _block()
    assert lines[0].startswith("export SYNC_DATABASE_URL=postgresql://")
    return "\n".join(["set -e", f"export SYNC_DATABASE_URL={shlex.quote(url)}", *lines[1:]])


def _run(script: str, tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_", "PG"))}
    env["TMPDIR"] = str(tmp_path)
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_readme_simulator_steps_work_word_for_word(pg_server: DatabaseServer, tmp_path: Path) -> None:
    """The README's steps create the database, migrate, sync every seeded message and show status;
    `simulate`'s output is sourced as shell and the simulator is stopped by the last line."""
    if not _port_free(simulator.DEFAULT_PORT):
        pytest.skip(f"port {simulator.DEFAULT_PORT} (the simulator's default, used by the README) is busy")
    name = f"readme_{uuid.uuid4().hex[:10]}"
    url = psycopg.conninfo.make_conninfo(pg_server.admin_url, dbname=name)
    try:
        ran = _run(_script(url), tmp_path, timeout=300)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        with psycopg.connect(url) as conn:
            inserted = conn.execute(
                "SELECT account_name, sum(rows_inserted) FROM sync_run WHERE outcome = 'succeeded' GROUP BY 1"
            ).fetchall()
            stored = conn.execute("SELECT account_name, count(*) FROM sms_history GROUP BY 1").fetchall()
        # The seeded backlog (5000 per account; exact duplicates in it are one message by design).
        assert sorted(inserted) == sorted(stored)
        assert sorted(a for a, _ in stored) == sorted(simulator.DEFAULT_ACCOUNTS)
        assert all(4_800 < n <= 5_000 for _, n in stored), stored
        assert "0252012345-00001" in ran.stdout  # the status table
        sourced = (tmp_path / "thingspace-sim.env").read_text().splitlines()
        assert all(line.startswith(("#", "export ")) for line in sourced)
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert _port_free(simulator.DEFAULT_PORT)  # `kill $!` stopped the simulator


def test_readme_simulator_steps_stop_when_the_simulator_cannot_start(
    pg_server: DatabaseServer, tmp_path: Path
) -> None:
    """With the simulator's port busy, the README's steps end at once (no endless wait) with a
    non-zero status and `simulate`'s one-line error, and run nothing against the database."""
    name = f"readme_{uuid.uuid4().hex[:10]}"
    url = psycopg.conninfo.make_conninfo(pg_server.admin_url, dbname=name)
    with socket.socket() as holder:
        with contextlib.suppress(OSError):  # busy already (another simulator): busy either way
            holder.bind(("127.0.0.1", simulator.DEFAULT_PORT))
            holder.listen()
        assert not _port_free(simulator.DEFAULT_PORT)
        ran = _run(_script(url), tmp_path, timeout=60)
    assert ran.returncode != 0, ran.stdout + ran.stderr
    assert (
        f"sync-worker: error: the simulator cannot listen on 127.0.0.1:{simulator.DEFAULT_PORT}" in ran.stderr
    )
    assert "Traceback" not in ran.stderr
    # Besides simulate's failure (its `command_failed` log event, then the error line), only what the
    # README says bash adds: one "No such process" per `kill` of the ended job (wait, guard, stop).
    others = [
        line
        for line in ran.stderr.splitlines()
        if not line.startswith("sync-worker: error: ") and '"command_failed"' not in line
    ]
    assert len(others) == 3 and all(line.endswith("No such process") for line in others), ran.stderr
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "bash says `kill: ... No such process` for each `kill` of the ended job" in readme
    assert ran.stdout == ""  # neither migrate, once nor status ran
    with psycopg.connect(pg_server.admin_url) as conn:
        created = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert created == (0,)


def test_readme_wait_line_is_quiet_before_the_simulator_writes_its_file(tmp_path: Path) -> None:
    """The README's wait loop may look for the simulator's file before the shell has created it
    (the redirection happens in the background job): that look prints nothing on stderr, and the
    loop ends once the exports are there."""
    (wait,) = [line for line in _block() if line.startswith("until ")]
    env_file = tmp_path / "thingspace-sim.env"
    # A running stand-in for `simulate`, and the loop's own `sleep` writing the exports: so the
    # loop's first look surely finds no file, and its second finds them.
    script = "\n".join(
        [
            "command sleep 60 &",
            f"sleep() {{ echo 'export SYNC_ACCOUNTS=x' > {shlex.quote(str(env_file))}; }}",
            wait,
            "kill $!",
        ]
    )
    ran = _run(script, tmp_path, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    assert env_file.read_text() == "export SYNC_ACCOUNTS=x\n"
