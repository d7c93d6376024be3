"""Child processes: a measured runner (wall time, CPU, peak RSS) and the simulator host.

CPU is the child's own user + system time from ``wait4``'s rusage. Peak RSS is the
child's own ``VmHWM`` (the kernel's high-water mark of its address space), read from
``/proc/<pid>/status`` while it runs. ``wait4``'s ``ru_maxrss`` is not used: Linux
carries the pre-exec high-water mark of the forked copy of the parent into it, so a
child of a 190 MiB parent reports at least 190 MiB whatever it does.

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
import threading
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
    # The child's own user + system CPU (all its threads), from wait4's rusage.
    cpu_seconds: float

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
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
    cwd: Path = ROOT,
) -> ChildRun:
    """Run a child to completion: wall time from start to exit, peak RSS (VmHWM, KiB), CPU seconds.

    The child is reaped with ``wait4`` so its rusage is its own (a parent-wide
    RUSAGE_CHILDREN delta would mix in children reaped meanwhile by other threads).
    """
    child_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=child_env, cwd=cwd)
        reaped: dict[str, float] = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped["ended"] = time.perf_counter()
            reaped["returncode"] = os.waitstatus_to_exitcode(status)
            reaped["cpu"] = usage.ru_utime + usage.ru_stime

        reaper = threading.Thread(target=reap, name="reap-child", daemon=True)
        reaper.start()
        peak = 0
        try:
            while reaper.is_alive():
                # VmHWM only grows, so the last reading before exit is the peak
                # (short of a spike in the final 10 ms, when the process is tearing down).
                hwm = vm_hwm_kib(proc.pid)
                if hwm is not None:
                    peak = max(peak, hwm)
                reaper.join(0.01)
                if reaper.is_alive() and time.perf_counter() - started > timeout:
                    proc.kill()
        finally:
            if reaper.is_alive():
                proc.kill()
                reaper.join()
        proc.returncode = int(reaped["returncode"])
        out.seek(0)
        err.seek(0)
        return ChildRun(
            proc.returncode, reaped["ended"] - started, peak, out.read(), err.read(), reaped["cpu"]
        )


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
        # The simulator's own ``worker_env()``: base URL, loopback permission, its credentials.
        self.env: dict[str, str] = {}

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
        self.env = {str(k): str(v) for k, v in hello["worker_env"].items()}
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

    def history_by_account(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.call("stats", by_account=True)["counts"].items()}

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


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` including its reaped children (a postmaster's backends)."""
    import psutil  # type: ignore[import-untyped]  # psutil has no inline types; types-psutil is not installed

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def _live_children_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def postmaster_pid(dsn: str) -> int | None:
    """The server's main pid, from its data directory (None when it is not local to us)."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        text = (Path(str(row[0])) / "postmaster.pid").read_text() if row else ""
        return int(text.splitlines()[0])
    except (OSError, ValueError, IndexError, psycopg.Error):
        return None


class CpuMeter:
    """CPU seconds spent by the worker (this process), the simulator and Postgres over a region.

    Backends that exit inside the region are counted through the postmaster's
    reaped-children times; backends still alive at either end are read directly.
    """

    def __init__(self, sim_pid: int, pg_pid: int | None) -> None:
        self.sim_pid = sim_pid
        self.pg_pid = pg_pid
        self.spent: dict[str, float] = {}
        self.wall = 0.0

    def _sample(self) -> dict[str, float]:
        out = {"worker": _process_cpu(os.getpid()), "simulator": _process_cpu(self.sim_pid)}
        if self.pg_pid is not None:
            out["postgres"] = _process_cpu(self.pg_pid) + _live_children_cpu(self.pg_pid)
        return out

    def __enter__(self) -> Self:
        self._before_children = self._children()
        self._before = self._sample()
        self._t0 = time.perf_counter()
        return self

    def _children(self) -> set[int]:
        import psutil

        if self.pg_pid is None:
            return set()
        try:
            return {c.pid for c in psutil.Process(self.pg_pid).children()}
        except psutil.Error:
            return set()

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        # A backend's CPU reaches the postmaster's totals only once it has been
        # reaped; wait (bounded) for the region's backends to be gone first.
        deadline = time.monotonic() + 3.0
        while self._children() - self._before_children and time.monotonic() < deadline:
            time.sleep(0.01)
        after = self._sample()
        self.spent = {k: max(0.0, after[k] - self._before[k]) for k in after}
