"""Running a daemon schedule: replicas of ``sync-worker run`` under timed faults, then healing alone.

1. Fault phase (pass 0, a few seconds): replica 0 runs (a real process, or in-process); the
   schedule's events fire at their times (``daemon_schedule``) and its API faults at their requests;
   every replica's ``/readyz`` is sampled every ``SAMPLE_SECONDS``.
2. Faults stop (episodes undone, triggers dropped, secret files current). New messages are queued;
   the replicas still running must store everything queued within ``DRAIN_SECONDS``, without a
   restart (I3-daemon), and say ready again (I3-readyz).
3. Every replica gets SIGTERM and must exit 0 within ``SIGTERM_SECONDS`` (I3-sigterm; also at each
   ``sigterm`` and ``replica_leave`` event). Then I1 and I2 as for ``once`` (``invariants``).

A replica that exits by itself with exit 3 (the database unusable when it started: a start during a
read-only episode or a restart) is started again after a second, as an orchestrator would, and noted;
a replica that exits by itself in any other way breaks I3-daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Final

from sync_worker import auth, errors, exitcodes, secret
from tests.chaos import daemon_schedule, execute, inproc, invariants, pg, procs, replicas, wallclock
from tests.chaos import schedule as sched
from tests.chaos import world as worldmod

# The daemon's settings: accounts due every second, claims that expire quickly, a short shutdown.
DAEMON_ENV: Final = {
    **execute.PROCESS_ENV,
    "SYNC_INTERVAL_SECONDS": "1",
    "SYNC_JITTER_SECONDS": "0",
    "SYNC_CLAIM_LEASE_SECONDS": "3",
    "SYNC_SHUTDOWN_TIMEOUT_SECONDS": "5",
    "SYNC_CONCURRENCY": "2",
    "SYNC_RUN_BUDGET_SECONDS": "10",
}
SAMPLE_SECONDS: Final = 0.2
# Once faults stop, everything queued is stored within this long: a retry after a failed start is
# due after at most the interval, a SIGKILLed replica's claims expire after the lease, and after a
# token request refused with a stale client secret the client asks again only once its window of
# token requests has passed (``auth.TOKEN_REQUEST_WINDOW``, 30 s: the bound that dominates).
DRAIN_SECONDS: Final = auth.TOKEN_REQUEST_WINDOW + 10.0
# After healing, /readyz is 200 again within this long (a poll a second, then the probe).
READY_SECONDS: Final = 5.0
# SIGTERM: the shutdown timeout, then the process's exit.
SIGTERM_SECONDS: Final = 10.0
# /readyz may still say ready this long past its stale age (a poll in flight, a probe's own time).
READYZ_LAG_SECONDS: Final = 2.0
# A process replica is sent SIGTERM once it serves its probes (before that it is still importing).
STARTUP_SECONDS: Final = 15.0


@dataclasses.dataclass
class _Live:
    replica: replicas.Replica
    started: float
    env: dict[str, str]
    ended: bool = False


class Daemons:
    """The replicas of one schedule, their probe samples and what their endings broke."""

    def __init__(self, world: worldmod.World, process: bool, secrets: Path) -> None:
        self.world = world
        self.process = process
        self.secrets = secrets
        self.live: dict[str, _Live] = {}
        self.samples: list[tuple[float, str, float, int | None]] = []  # (t, replica, started, status)
        self.violations: list[invariants.Violation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="chaos-readyz", daemon=True)

    def env(self, event: sched.Event | None = None) -> dict[str, str]:
        env = self.world.env(None, **DAEMON_ENV)
        if event is not None:
            host = event.text("base_url")
            slash = "/" if event.get("slash") else ""
            env["THINGSPACE_BASE_URL"] = f"http://{host}:{self.world.sim.port}/api{slash}"
            name = worldmod.USERNAME
            env["THINGSPACE_USERNAME"] = {"as_is": name, "upper": name.upper(), "title": name.title()}[
                event.text("username")
            ]
        # Secrets from files, as a deployment mounts them: a rotation rewrites the file.
        env.pop("THINGSPACE_PASSWORD", None)
        env.pop("THINGSPACE_CLIENT_SECRET", None)
        env["THINGSPACE_PASSWORD_FILE"] = str(self.secrets / "password")
        env["THINGSPACE_CLIENT_SECRET_FILE"] = str(self.secrets / "client_secret")
        return env

    def start(self, name: str, env: dict[str, str]) -> None:
        kind = replicas.ProcessReplica if self.process else replicas.InprocReplica
        replica = kind(name, env)
        with self._lock:
            self.live[name] = _Live(replica, time.monotonic(), env)
        if not self._sampler.is_alive():
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                live = [(n, r) for n, r in self.live.items() if not r.ended]
            for name, entry in live:
                if not entry.replica.alive:
                    self._exited_by_itself(name, entry)
                    continue
                status = entry.replica.readyz()
                with self._lock:
                    self.samples.append((time.monotonic(), name, entry.started, status))

    def _exited_by_itself(self, name: str, entry: _Live) -> None:
        code, _ = entry.replica.terminate(SIGTERM_SECONDS)
        with self._lock:
            if entry.ended or self.live.get(name) is not entry:
                return
            entry.ended = True
        self.world.notes.append(f"replica {name} exited by itself with {code}")
        if code == exitcodes.DATABASE:
            # What an orchestrator does with a daemon that could not start: start it again.
            if not self._stop.wait(1.0):
                self.start(name, entry.env)
            return
        self.violations.append(
            invariants.Violation("I3-daemon", None, f"replica {name} exited by itself with exit {code}")
        )

    def wait_serving(self, name: str) -> None:
        """Wait until replica ``name`` answers its probes (any status) or has ended."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                entry = self.live.get(name)
            if entry is None or entry.ended or not entry.replica.alive or entry.replica.readyz() is not None:
                return
            time.sleep(0.05)

    def end(self, name: str, how: str, pass_no: int | None) -> None:
        """End replica ``name`` with SIGTERM (checked: exit 0 within the bound) or SIGKILL."""
        with self._lock:
            entry = self.live.get(name)
            if entry is None or entry.ended:
                return
            entry.ended = True
        if how == "sigkill":
            entry.replica.kill()
            self.world.notes.append(f"replica {name} SIGKILLed")
            return
        code, took = entry.replica.terminate(SIGTERM_SECONDS)
        self.world.notes.append(f"replica {name} SIGTERM: exit {code} after {took:.1f} s")
        if code != exitcodes.OK:
            detail = (
                f"replica {name} did not exit within {SIGTERM_SECONDS:.0f} s of SIGTERM"
                if code is None
                else f"replica {name} exited {code} on SIGTERM (after {took:.1f} s), not 0"
            )
            tail = getattr(entry.replica, "stderr_tail", lambda: "")()
            self.violations.append(invariants.Violation("I3-sigterm", pass_no, detail + _tail(tail)))

    def running(self) -> list[str]:
        with self._lock:
            return [n for n, r in self.live.items() if not r.ended]

    def close(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(timeout=10)
        for name in self.running():
            with contextlib.suppress(Exception):
                self.end(name, "sigkill" if self.process else "sigterm", None)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()][-3:]
    return ("; its last words: " + " | ".join(line[:300] for line in lines)) if lines else ""


class _Faults:
    """The timed events of the fault phase and how to undo the lasting ones."""

    def __init__(self, world: worldmod.World, daemons: Daemons, dbs: pg.Databases) -> None:
        self.world = world
        self.daemons = daemons
        self.dbs = dbs
        self.read_only_depth = 0
        self.read_only_windows: list[tuple[float, float]] = []
        self._read_only_since = 0.0
        self.failing: dict[str, int] = {}
        self.secrets = {"password": worldmod.PASSWORD, "client_secret": worldmod.CLIENT_SECRET}
        self.rotations = 0

    def timeline(self, schedule: sched.Schedule) -> list[tuple[float, str, Any]]:
        out: list[tuple[float, str, Any]] = []
        for event in schedule.events:
            if event.trigger[0] != "t":
                continue
            at = daemon_schedule.seconds_of(event)
            out.append((at, "fire", event))
            if event.action in ("db_readonly", "db_fail"):
                out.append((at + event.number("seconds"), "undo", event))
            elif event.action == "rotate":
                out.append((at + event.number("lag"), "file", event))
        out.sort(key=lambda item: item[0])
        return out

    def fire(self, event: sched.Event) -> None:  # noqa: PLR0912  # one branch per action
        w, url, action = self.world, self.world.db_url, event.action
        w.note(event)
        if action == "db_readonly":
            self.dbs.read_only(url, True)
            w.read_only = True
            # A session keeps the setting it began with: the daemon's sessions must be new ones.
            self.dbs.terminate_all(url)
            if self.read_only_depth == 0:
                self._read_only_since = time.monotonic()
            self.read_only_depth += 1
        elif action == "db_fail":
            table = event.text("table")
            if self.failing.get(table, 0) == 0:
                self.dbs.failing(url, table, True)
            self.failing[table] = self.failing.get(table, 0) + 1
        elif action == "db_terminate":
            self.dbs.terminate_all(url)
        elif action == "db_restart":
            self.dbs.restart(url)
        elif action == "clock_step":
            if self.daemons.process:
                w.notes.append("clock step skipped: a real process's wall clock is not injectable")
            else:
                wallclock.step(event.number("seconds"))
        elif action == "sigterm":
            self.daemons.wait_serving("r0")
            self.daemons.end("r0", "sigterm", 0)
            self.daemons.start("r0", self.daemons.env())
        elif action == "replica_join":
            if "r1" not in self.daemons.running():
                self.daemons.start("r1", self.daemons.env(event))
        elif action == "replica_leave":
            self.daemons.wait_serving("r1")
            self.daemons.end("r1", event.text("how"), 0)
        elif action == "rotate":
            what = event.text("what")
            self.rotations += 1
            self.secrets[what] = f"{self.secrets[what]}-rotated-{self.rotations}"
            setattr(w.sim.config, what, secret.Secret(self.secrets[what]))
            # Logins happen while the files are stale: the session and bearer go at the next request.
            w.sim.faults.script("history", ["expire_session", "expire_bearer"])
        elif action == "inject":
            w.inject(event.text("account"), int(event.number("count")))
        else:
            raise ValueError(f"unknown daemon action {action!r}")

    def undo(self, event: sched.Event) -> None:
        if event.action == "db_readonly":
            self.read_only_depth -= 1
            if self.read_only_depth == 0:
                self.read_only_windows.append((self._read_only_since, time.monotonic()))
                self.dbs.read_only(self.world.db_url, False)
                self.world.read_only = False
        elif event.action == "db_fail":
            table = event.text("table")
            self.failing[table] -= 1
            if self.failing[table] == 0:
                self.dbs.failing(self.world.db_url, table, False)

    def write_secrets(self) -> None:
        for what, value in self.secrets.items():
            path = self.daemons.secrets / what
            # Replaced whole (a rename), as a mounted secret is: no reader sees half a file.
            fresh = path.with_suffix(".new")
            fresh.write_text(value + "\n", encoding="utf-8")
            fresh.replace(path)

    def stop_all(self) -> None:
        """Every lasting fault ends (the phase is over)."""
        if self.read_only_depth:
            self.read_only_windows.append((self._read_only_since, time.monotonic()))
            self.read_only_depth = 0
        for table, depth in self.failing.items():
            if depth:
                self.dbs.failing(self.world.db_url, table, False)
        self.failing.clear()
        self.write_secrets()


def run(schedule: sched.Schedule, dbs: pg.Databases) -> execute.Result:
    started = time.monotonic()
    process = schedule.mode == "daemon"
    world = worldmod.World(
        schedule,
        dbs,
        timeout_seconds=1.2,
        operator=procs.operator if process else inproc.operator,
        own_server=daemon_schedule.needs_own_server(schedule),
    )
    checker = invariants.Checker(world)
    violations: list[invariants.Violation] = []
    error: str | None = None
    platform_lost = acknowledged = 0
    with contextlib.ExitStack() as stack:
        secrets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-secrets-")))
        if not process:
            stack.enter_context(wallclock.injected())
        daemons = Daemons(world, process, secrets)
        faults = _Faults(world, daemons, dbs)
        try:
            faults.write_secrets()
            violations += _phases(schedule, world, checker, daemons, faults)
            violations += daemons.violations
            platform_lost = checker.platform_lost()
            acknowledged = sum(world.acknowledged().values())
        except Exception:
            error = traceback.format_exc(limit=8)
        finally:
            daemons.close()
            world.close()
    return execute.result(
        schedule.as_json(),
        world,
        started,
        violations=violations,
        acknowledged=acknowledged,
        platform_lost=platform_lost,
        error=error,
    )


def _phases(  # noqa: PLR0912  # the three phases in order, read top to bottom
    schedule: sched.Schedule,
    world: worldmod.World,
    checker: invariants.Checker,
    daemons: Daemons,
    faults: _Faults,
) -> list[invariants.Violation]:
    out: list[invariants.Violation] = []
    # 1. Faults.
    world.begin_pass(0, fault=True)
    try:
        daemons.start("r0", daemons.env())
        begun = time.monotonic()
        for at, what, event in faults.timeline(schedule):
            delay = begun + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if what == "fire":
                faults.fire(event)
            elif what == "undo":
                faults.undo(event)
            else:
                faults.write_secrets()
        rest = begun + daemon_schedule.phase_seconds(schedule) - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    finally:
        faults.stop_all()
        world.end_pass()
    # The fault phase is one "pass" whose end nobody saw: final blocks delivered in it may have been
    # lost to a replica killed or failing before its commit (not a promise: invariants).
    record = worldmod.PassRecord(0, "fault", None, tuple(schedule.accounts))
    world.records.append(record)
    out += checker.after_pass(record)
    # 2. Healing, without a restart.
    world.begin_pass(1, fault=False)
    healed_from = time.monotonic()
    rng = random.Random(schedule.seed + 1)
    for account in schedule.accounts:
        world.inject(account, rng.randint(1, 2 * schedule.block_size))
    drained = _wait(checker.drained, DRAIN_SECONDS)
    if not drained:
        waiting = sum(1 for k in world.queued() if k not in world.stored())
        out.append(
            invariants.Violation(
                "I3-daemon",
                1,
                f"{waiting} queued message(s) not stored {DRAIN_SECONDS:.0f} s after the faults stopped "
                f"(replicas running: {', '.join(daemons.running()) or 'none'}); {_evidence(world)}",
            )
        )
    else:
        world.notes.append(f"drained {time.monotonic() - healed_from:.1f} s after the faults stopped")
        for name in daemons.running():
            entry = daemons.live[name]
            if not _wait(lambda e=entry: e.replica.readyz() == 200, READY_SECONDS):
                out.append(
                    invariants.Violation(
                        "I3-readyz", 1, f"replica {name} healed but /readyz is still not 200"
                    )
                )
    out += _readyz_honest(daemons, faults)
    # 3. SIGTERM to everyone: exit 0 within the bound.
    for name in daemons.running():
        daemons.end(name, "sigterm", 1)
    last = worldmod.PassRecord(1, "drain", 0 if drained else None, ())
    world.records.append(last)
    out += checker.after_pass(last)
    out += checker.final(True, last)
    return out


def _evidence(world: worldmod.World) -> str:
    """What the database says about why nothing drained: the login guard's row and each account's
    last runs (the JSON report keeps no worker log)."""
    parts: list[str] = []
    with contextlib.suppress(Exception):
        for row in world.query(
            "SELECT username, consecutive_failures, last_outcome, pending_holder, "
            "round(EXTRACT(EPOCH FROM (pending_until - now()))::numeric, 1), last_error FROM login_guard"
        ):
            parts.append(
                f"guard {row[0]}: {row[1]} failure(s), last {row[2]}, pending {row[3]} "
                f"(lease left {row[4]} s), last error {str(row[5])[:200]!r}"
            )
        for row in world.query(
            "SELECT account_name, outcome, left(error, 200) FROM ("
            "SELECT *, row_number() OVER (PARTITION BY account_name ORDER BY id DESC) AS n FROM sync_run"
            ") r WHERE n <= 2 ORDER BY account_name, id DESC"
        ):
            parts.append(f"run {row[0]}: {row[1]} {row[2] or ''}".rstrip())
    return "; ".join(parts) or "no guard row, no run"


def _readyz_honest(daemons: Daemons, faults: _Faults) -> list[invariants.Violation]:
    """I3-readyz: no 200 from a replica while the database refused writes for longer than its stale
    age plus the allowed lag."""
    out: list[invariants.Violation] = []
    with daemons._lock:  # the sampler may still be appending
        samples = list(daemons.samples)
    for since, until in faults.read_only_windows:
        for at, name, replica_started, status in samples:
            stale_after = daemons.live[name].replica.stale_after
            if status == 200 and max(since, replica_started) + stale_after + READYZ_LAG_SECONDS < at < until:
                out.append(
                    invariants.Violation(
                        "I3-readyz",
                        0,
                        f"replica {name}: /readyz 200 {at - since:.1f} s into a read-only episode of "
                        f"{until - since:.1f} s (it cannot claim; stale after {stale_after:.0f} s)",
                    )
                )
                break
    return out


def _wait(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(errors.SyncWorkerError):
            if condition():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
