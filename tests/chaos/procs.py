"""Running a pass as a real ``python -m sync_worker once`` process, killed with a real SIGKILL.

This keeps the in-process model honest: the process builds its own client, guard, pool and logging
from its environment alone, and a crash is the kernel ending it mid-request (the simulator's hook
kills it when the timed request arrives, then drops or processes that request), not an exception
that ``finally`` blocks still see. Operator commands run as processes too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Final

from sync_worker import exitcodes
from tests.chaos import inproc
from tests.chaos import world as worldmod

REPO: Final = Path(__file__).resolve().parents[2]
# A pass that has not ended after this long is killed and counted as hung (I3 reports it).
PASS_TIMEOUT: Final = 60.0
HUNG: Final = -9


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sync_worker", *args]


def _environ(env: dict[str, str]) -> dict[str, str]:
    """``env`` over this process's environment minus its own worker settings (``SYNC_*``,
    ``THINGSPACE_*``, ``PG*``), which must not leak into the worker."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_", "PG"))}
    return {**kept, **env}


def run_pass(world: worldmod.World, env: dict[str, str]) -> inproc.Outcome:
    """One ``once`` process against ``world``; ``world.kill`` SIGKILLs it while it runs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(_command(["once"]), env=_environ(env), cwd=REPO, stdout=out, stderr=err)
        killed = threading.Event()
        lock = threading.Lock()

        def kill() -> None:
            with lock:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed.set()

        world.kill = kill
        try:
            code = proc.wait(timeout=PASS_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill()
            return inproc.Outcome(HUNG, tuple(world.schedule.accounts))
        finally:
            world.kill = None
        if killed.is_set() or code < 0:
            return inproc.Outcome(None, tuple(world.schedule.accounts))
        out.seek(0)
        return inproc.Outcome(code, _failed(out.read().decode("utf-8", "replace"), world, code))


def _failed(stdout: str, world: worldmod.World, code: int) -> tuple[str, ...]:
    """The accounts the pass's JSON summary lists as failed (every account without a summary)."""
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            summary = json.loads(line)
            if isinstance(summary, dict) and isinstance(summary.get("failed"), list):
                return tuple(str(a) for a in summary["failed"])
    return () if code == exitcodes.OK else tuple(world.schedule.accounts)


def operator(argv: list[str], env: dict[str, str]) -> int:
    """An operator command as a process (its output discarded)."""
    try:
        done = subprocess.run(  # noqa: PLW1510  # the exit code is the result
            _command(argv),
            env=_environ(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PASS_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return HUNG
    return done.returncode


class Process:
    """One long-lived ``sync-worker`` process, its output in a file."""

    def __init__(self, role: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.role = role
        self.argv = argv
        self.env = env
        self.log = logdir / f"{role}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.exits: list[int] = []

    def start(self) -> None:
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(  # our own interpreter and module
            _command(self.argv),  # the one way chaos starts a worker
            env=_environ(self.env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.exits.append(code)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
        return code
