"""Daemon replicas for daemon schedules: real ``sync-worker run`` processes, or the daemon in-process.

Both kinds serve ``/readyz`` on a port of their own and end on SIGTERM (a process) or its stop event
(in-process, where the stop event is what the SIGTERM handler sets). A process replica is the real
thing: its own client, guard, pools and logging from its environment, its health server with the
production probes (``STALE_POLL_SECONDS``), a SIGKILL the kernel's. An in-process replica is
``app.run_daemon`` on a thread with a ``probes.Liveness`` that goes stale after ``STALE_SECONDS``
(so a few seconds of faults are enough to see ``/readyz`` say "not ready"), and it reads the
injectable wall clock (``wallclock``).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Final, Protocol

from sync_worker import app, config, errors, exitcodes, health, metrics, probes
from tests.chaos import procs

# In-process /readyz turns 503 this long after the last successful claim poll (production: 10 s).
STALE_SECONDS: Final = 1.0


class Replica(Protocol):
    name: str
    # /readyz turns 503 at most this long after the replica could last claim.
    stale_after: float

    def readyz(self) -> int | None:
        """The status of ``GET /readyz`` (None: no answer)."""

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds it took), exit code None when it did not exit in ``timeout``."""

    def kill(self) -> None:
        """SIGKILL (processes only)."""

    @property
    def alive(self) -> bool: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


class ProcessReplica:
    """``python -m sync_worker run`` with ``SYNC_METRICS_PORT`` on a free port."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.stale_after = probes.STALE_POLL_SECONDS
        self.port = free_port()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the process it logs
        self.proc = subprocess.Popen(
            [*procs._command(["run"])],  # the same command line as the once passes
            env=procs._environ({**env, "SYNC_METRICS_PORT": str(self.port)}),
            cwd=procs.REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def readyz(self) -> int | None:
        return _get(self.port, "/readyz") if self.alive else None

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        self._err.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stderr_tail(self) -> str:
        try:
            self._err.seek(0)
            return self._err.read().decode("utf-8", "replace")[-2000:]
        except ValueError:
            return ""


class InprocReplica:
    """``app.run_daemon`` on a thread, its probes on a health server of its own."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.stale_after = STALE_SECONDS
        settings = config.load(env)
        m = metrics.Metrics()
        self.liveness = probes.Liveness(stale_after=STALE_SECONDS)
        self.server = health.HealthServer(
            0,
            m,
            live=self.liveness.check,
            ready=health.checks([("claims", self.liveness.check_claims)]),
            host="127.0.0.1",
        ).start()
        self.stop = threading.Event()
        self.result: list[int | BaseException] = []

        def run() -> None:
            try:
                self.result.append(
                    app.run_daemon(
                        settings,
                        stop_event=self.stop,
                        metrics=m,
                        install_signal_handlers=False,
                        liveness=self.liveness,
                    )
                )
            except BaseException as exc:  # reported as the replica's outcome
                self.result.append(exc)

        self.thread = threading.Thread(target=run, name=f"chaos-daemon-{name}", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def readyz(self) -> int | None:
        return _get(self.server.port, "/readyz")

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout)
        took = time.monotonic() - started
        self.server.stop()
        if self.thread.is_alive() or not self.result:
            return None, took
        outcome = self.result[0]
        if isinstance(outcome, errors.SyncWorkerError):
            # What ``cli.main`` makes of it: exit 3 for a database it could not use, and so on.
            return exitcodes.for_error(outcome), took
        return (outcome if isinstance(outcome, int) else -1), took

    def kill(self) -> None:
        raise NotImplementedError("a thread cannot be killed: in-process replicas leave by SIGTERM")
