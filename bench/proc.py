"""Child processes: a measured runner (wall time + peak RSS) and the simulator host.

Peak RSS comes from ``wait4``'s rusage of that one child (Linux reports
``ru_maxrss`` in KiB), which is the kernel's own high-water mark for the process
and cannot miss a short spike the way polling ``/proc/<pid>/status`` can. The
child also reports ``VmHWM`` itself as a cross-check.

The simulator runs in its own process so that serving (and holding) a backlog
of a million messages neither shares the worker's GIL nor counts in its RSS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class ChildRun:
    returncode: int
    wall_seconds: float
    peak_rss_kib: int
    stdout: str
    stderr: str

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_kib / 1024.0

    def last_json(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object (the child's report)."""
        for raw in reversed(self.stdout.splitlines()):
            line = raw.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
        raise RuntimeError(f"child printed no JSON report; stderr tail:\n{self.stderr[-2000:]}")


def run_measured(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 1800.0
) -> ChildRun:
    """Run a child to completion; return its wall time and kernel-reported peak RSS."""
    child_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=child_env, cwd=ROOT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            # Polling with a short timeout keeps the timeout enforceable; the
            # measurement itself comes from rusage, not from this loop.
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, wall, int(usage.ru_maxrss), out.read(), err.read())


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size from /proc/<pid>/status (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class SimHost:
    """The simulator in a child process, driven by JSON lines over its stdin/stdout."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self._config = dict(config or {})
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simhost", json.dumps(self._config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            cwd=ROOT,
            bufsize=1,
        )
        hello = self._read()
        self.base_url = str(hello["base_url"])
        return self

    def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("simulator host exited (see its stderr above)")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise RuntimeError(f"simulator host sent {line!r}")
        if "error" in reply:
            raise RuntimeError(f"simulator host: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def seed(self, account: str, n: int, seed: int = 1) -> int:
        return int(self.call("seed", account=account, n=n, seed=seed)["queued"])

    def queued(self, account: str) -> int:
        return int(self.call("queued", account=account)["queued"])

    def acknowledged(self, account: str) -> int:
        return int(self.call("acknowledged", account=account)["acknowledged"])

    def set_latency(self, seconds: float) -> None:
        self.call("latency", seconds=seconds)

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def reset(self) -> None:
        self.call("reset")

    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(RuntimeError, OSError, ValueError):
            self.call("quit")
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
