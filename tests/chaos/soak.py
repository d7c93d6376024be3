"""Soak mode (``python -m tests.chaos --soak MINUTES``, ``make chaos SOAK=60``): one ``sync-worker run``
daemon and one ``sync-worker receive`` receiver, real processes, for a long time under a slow fault
schedule, their resources sampled (I5), their promises checked at the end (I1, I2, I3).

The world: the simulator with three accounts, two of them in push mode (a listener registered
for each, ``startCallbacks``; the daemon polls all three, the safety net), new messages every
second, callbacks duplicated (5 %) and reordered, retried three times two seconds apart, then back
in the queue for polling. The daemon and the receiver each reach the database through a proxy of
their own (``tests/reliability/proxy.py``), so a connection cut hits one of them, and their database
connections can be counted by the kernel (``resources.connections_to``).

The slow schedule (one seed, ``--seed``): every 10-30 s one fault: an API status (5xx, 429, 408 with
``Retry-After``), an answer lost after processing, a timeout, an unreadable or trickled block, a
login or token refusal, an expired session or bearer, 2xx callback answers lost, the listener's
password wrong for a while (callbacks refused: bad credentials); rarely a database fault (every
backend ended, one process's connections cut, a read-only episode). The receiver is restarted
(SIGTERM or SIGKILL, down 3-8 s) ``receiver_restarts`` times within the first 30 %, so that the
second half, the window I5 judges, sees one receiver process; the daemon is never restarted.

At the end every fault stops and the traffic with it; then within ``soak_report.DRAIN_SECONDS``
every pushed callback must be settled and every queued message stored (I3, without a restart); then:

* I1: every message the platform counts as acknowledged (polled) or pushed with a 2xx is in
  ``sms_history`` exactly once (or kept with its bytes in ``sms_quarantine``). Counted apart, never
  silently: a final block the platform dequeued on delivery within ``FINAL_BLOCK_WINDOW`` seconds of
  a database fault, and then not stored (the platform's final-block rule, docs/testing.md); and a
  message without a timestamp that arrived both ways (stored by the receiver and polled, e.g. its 2xx
  was lost): two rows, one per way, as docs/schema.md ("Pushed messages") says
  (``invariants.split_doubles``);
* I2: the vendor's failed logins in a row stayed below 5;
* I5: ``resources.judge`` for the daemon and the receiver.

Outputs (``out_dir``): ``soak-resources.csv``, ``soak-summary.md`` and ``soak-resources.png`` (module
``soak_report``). The slow schedule's faults are module ``soak_faults``; the push-mode set-up
(listener, ``startCallbacks``) is module ``listener``; the long-lived processes are ``procs.Process``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import random
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import psycopg

from sync_worker import secret, simulator
from tests.chaos import invariants, listener, pg, procs, resources, soak_faults, soak_report
from tests.chaos import world as worldmod
from tests.reliability import proxy

ACCOUNTS: Final = ("0252012345-00001", "0000000007-00002", "4200000000-00003")
PUSHED: Final = ACCOUNTS[:2]  # in push mode; the third is polled only
FINAL_BLOCK_WINDOW: Final = 20.0
WORKER_ENV: Final = {
    "SYNC_INTERVAL_SECONDS": "5",
    "SYNC_JITTER_SECONDS": "1",
    "SYNC_CONCURRENCY": "2",
    "SYNC_RUN_BUDGET_SECONDS": "30",
    "SYNC_CLAIM_LEASE_SECONDS": "20",
    "THINGSPACE_CONNECT_TIMEOUT": "2",
    "THINGSPACE_READ_TIMEOUT": "2",
    "THINGSPACE_TOTAL_TIMEOUT": "20",
    "THINGSPACE_RETRY_MAX_WAIT": "1",
    "THINGSPACE_RETRY_MAX_RETRY_AFTER": "5",
    "SYNC_LOG_FORMAT": "json",
    "SYNC_LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}


@dataclasses.dataclass
class SoakConfig:
    minutes: float
    seed: int = 1
    sample_seconds: float = 10.0
    fault_gap: tuple[float, float] = (10.0, 30.0)
    receiver_restarts: int = 3
    out_dir: Path | None = None
    label: str = "soak"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    return "?"


class Soak:
    """The daemon, the receiver and the simulator of one soak (``start``, ``run``, ``finish``)."""

    def __init__(self, admin_url: str, template: str, config: SoakConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.dbs = pg.Databases(admin_url, template)
        self.db_url = self.dbs.create()
        self.sim = simulator.Simulator(
            simulator.SimConfig(
                host="127.0.0.1",
                port=0,
                accounts=ACCOUNTS,
                block_size=20,
                final_ack="on_delivery",
                client_id=worldmod.CLIENT_ID,
                client_secret=secret.Secret(worldmod.CLIENT_SECRET),
                username=worldmod.USERNAME,
                password=secret.Secret(worldmod.PASSWORD),
                callback_retry_seconds=2.0,
                callback_attempts=3,
                callback_timeout=5.0,
                callback_duplicate_rate=0.05,
                callback_reorder=True,
                callback_seed=config.seed,
            )
        )
        self.sim.faults.timeout_seconds = 3.0
        self.sim.hooks.final_block = self._final_block
        self.sim.start()
        self.daemon_proxy = proxy.PgProxy(self.dbs.worker_url(self.db_url))
        self.receiver_proxy = proxy.PgProxy(self.dbs.worker_url(self.db_url))
        self.callback_port = listener.free_port()
        self.logdir = Path(tempfile.mkdtemp(prefix=f"chaos-{config.label}-"))
        base = {**self.sim.worker_env(accounts=ACCOUNTS), **WORKER_ENV}
        self.daemon = procs.Process(
            "daemon",
            ["run"],
            {
                **base,
                "SYNC_DATABASE_URL": self.daemon_proxy.conninfo(),
                "SYNC_METRICS_PORT": str(listener.free_port()),
            },
            self.logdir,
        )
        self.receiver = procs.Process(
            "receiver",
            ["receive"],
            {
                **base,
                "SYNC_DATABASE_URL": self.receiver_proxy.conninfo(),
                "SYNC_CALLBACK_HOST": "127.0.0.1",
                "SYNC_CALLBACK_PORT": str(self.callback_port),
                "SYNC_CALLBACK_USERNAME": listener.LISTENER_USER,
                "SYNC_CALLBACK_PASSWORD": listener.LISTENER_PASSWORD,
            },
            self.logdir,
        )
        self.serial = dict.fromkeys(ACCOUNTS, 0)
        self.injected = 0
        self.slow = soak_faults.SlowFaults(
            self.sim,
            dbs=self.dbs,
            db_url=self.db_url,
            proxies=(self.daemon_proxy, self.receiver_proxy),
            pushed=PUSHED,
            register=self._register,
            rng=self.rng,
        )
        self.final_deliveries: list[tuple[float, str, list[Any]]] = []
        self.samples: list[resources.Sample] = []
        self.restarts = 0
        self.started = time.monotonic()
        self._observer: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)
        self.load_start = loadavg()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self.receiver.start()
        self._wait_listening()
        for account in PUSHED:
            self._register(account, listener.LISTENER_PASSWORD)
        self._start_callbacks()
        self.daemon.start()
        self.started = time.monotonic()
        self._sampler.start()

    def run(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Traffic and the slow fault schedule for ``seconds`` (or until ``stop`` is set)."""
        begin = time.monotonic()
        end = begin + seconds
        restarts = sorted(
            begin + seconds * self.rng.uniform(0.08, 0.30) for _ in range(self.config.receiver_restarts)
        )
        next_fault = begin + self.rng.uniform(*self.config.fault_gap)
        pause = threading.Event()
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            now = time.monotonic()
            self.inject(self.rng.choice(ACCOUNTS), self.rng.randint(1, 4))
            self.slow.end_episodes(now)
            if restarts and now >= restarts[0]:
                restarts.pop(0)
                self.restart_receiver()
            elif now >= next_fault:
                self.slow.fire(self.slow.pick())
                next_fault = time.monotonic() + self.rng.uniform(*self.config.fault_gap)
            if self.daemon.pid is None:
                # The daemon died on its own: a finding, not something to restart quietly.
                break
            pause.wait(1.0)  # pacing of the traffic, one round a second; nothing waits on it

    def finish(self) -> soak_report.SoakResult:
        """Stop the faults and the traffic, let it drain, check, stop the processes, write the outputs."""
        violations: list[str] = []
        self.slow.end_episodes(float("inf"))
        self.sim.faults.clear()
        self.daemon_proxy.restore()
        self.receiver_proxy.restore()
        daemon_died = self.daemon.pid is None
        if daemon_died:
            violations.append(
                f"I3: the daemon exited on its own (exit {self.daemon.proc and self.daemon.proc.poll()})"
            )
        if self.receiver.pid is None:
            self.receiver.start()
            self._wait_listening()
        faults_end = time.monotonic()
        drained = self._drain(faults_end + soak_report.DRAIN_SECONDS)
        drain_seconds = time.monotonic() - faults_end if drained else None
        if not drained:
            violations.append(
                f"I3: not drained within {soak_report.DRAIN_SECONDS:.0f} s after the faults stopped"
            )
        self._stop.set()
        self._sampler.join(timeout=30)
        end_t = time.monotonic() - self.started
        # I1 over everything handed over: polled (acknowledged) and pushed with a 2xx.
        stored = self.stored()
        kept = self.quarantined()
        polled = self._keys(self.sim.acknowledged)
        pushed = self._keys(self.sim.pushed)
        expected = set(polled) | set(pushed)
        doubled, both_ways = invariants.split_doubles(stored, self.untimed())
        missing = {k for k in expected if stored[k] == 0 and not worldmod.in_quarantine(k, kept)}
        at_risk = self._at_risk()
        lost = missing - at_risk
        if doubled:
            violations.append(
                f"I1-doubled: {len(doubled)} message(s) stored more than once: {_some(doubled)}"
            )
        if lost:
            violations.append(
                f"I1-lost: {len(lost)} message(s) acknowledged or pushed with a 2xx are neither in "
                f"sms_history nor kept: {_some(lost)}"
            )
        peak = self.sim.peak_failed_login_streak()
        if peak >= resources_lockout():
            violations.append(f"I2: the vendor's failed logins in a row reached {peak}")
        verdicts = resources.judge(self.samples, "daemon", 0.0, end_t)
        verdicts += resources.judge(self.samples, "receiver", 0.0, end_t)
        daemon_exit = None if daemon_died else self.daemon.stop()
        self.receiver.stop()
        if daemon_exit not in (None, 0):
            violations.append(f"the daemon exited {daemon_exit} on SIGTERM (expected 0)")
        push = self.sim.push.counters
        result = soak_report.SoakResult(
            seconds=end_t,
            injected=self.injected,
            polled=sum(polled.values()),
            pushed=sum(pushed.values()),
            pushed_distinct=len(pushed),
            stored=sum(stored.values()),
            faults=self.slow.counts,
            receiver_restarts=self.restarts,
            push_counters=dataclasses.asdict(push),
            violations=violations,
            platform_lost=len(missing & at_risk),
            both_ways=len(both_ways),
            drain_seconds=drain_seconds,
            peak_failed_logins=peak,
            daemon_exit=daemon_exit,
            samples=list(self.samples),
            verdicts=verdicts,
            loadavg=(self.load_start, loadavg()),
        )
        if self.config.out_dir is not None:
            result.files = soak_report.write_outputs(result, self.config.out_dir, self.config.label)
        return result

    def close(self) -> None:
        self._stop.set()
        for process in (self.daemon, self.receiver):
            with contextlib.suppress(Exception):
                process.stop(signal.SIGKILL, timeout=10)
        self.sim.hooks.final_block = None
        self.sim.stop()
        self.daemon_proxy.close()
        self.receiver_proxy.close()
        if self._observer is not None:
            self._observer.close()
        if self.slow.readonly_until is not None:
            self.dbs.read_only(self.db_url, False)
        self.dbs.drop_later(self.db_url)
        self.dbs.close()

    # --- traffic and faults ------------------------------------------------------------

    def inject(self, account: str, n: int) -> None:
        start = self.serial[account]
        self.sim.inject(account, worldmod.make_messages(account, start, n))
        self.serial[account] = start + n
        self.injected += n

    def restart_receiver(self) -> None:
        """The receiver stopped (SIGTERM or SIGKILL, alternately), down 3-8 s, started again."""
        sig = signal.SIGTERM if self.restarts % 2 == 0 else signal.SIGKILL
        self.restarts += 1
        self.slow.counts["receiver_restart"] += 1
        self.receiver.stop(sig)
        threading.Event().wait(self.rng.uniform(3, 8))  # down: callbacks are refused, then retried
        self.receiver.start()
        self._wait_listening()

    # --- the platform side ---------------------------------------------------------------

    def _register(self, account: str, password: str) -> None:
        listener.register_listener(self.sim, account, self.callback_port, password)

    def _start_callbacks(self) -> None:
        listener.start_callbacks(self.sim, PUSHED)

    def _wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.callback_port), 1):
                return
            if self.receiver.pid is None:
                raise RuntimeError(f"the receiver exited; its log: {self.receiver.log}")
            threading.Event().wait(0.1)  # polling the port: the receiver says nothing else
        raise RuntimeError(
            f"the receiver did not listen within {timeout:.0f} s; its log: {self.receiver.log}"
        )

    def _final_block(self, account: str, messages: list[Any]) -> None:
        with self._lock:
            self.final_deliveries.append((time.monotonic(), account, list(messages)))

    def _at_risk(self) -> set[worldmod.Key]:
        """Messages of final blocks dequeued on delivery close to a database fault: the daemon may have
        failed that run before committing them (the platform's rule, counted apart)."""
        out: set[worldmod.Key] = set()
        for at, account, messages in self.final_deliveries:
            if any(abs(at - f) <= FINAL_BLOCK_WINDOW for f in self.slow.db_fault_times):
                out.update((account, str(m.get("message"))) for m in messages)
        return out

    # --- sampling, draining, what the database holds ----------------------------------------

    def _sample_loop(self) -> None:
        wait = threading.Event()
        while not self._stop.is_set():
            t = time.monotonic() - self.started
            for process, port in (
                (self.daemon, self.daemon_proxy.port),
                (self.receiver, self.receiver_proxy.port),
            ):
                pid = process.pid
                if pid is None:
                    continue
                found = resources.sample(pid, process.role, t, port)
                if found is not None:
                    with self._lock:
                        self.samples.append(found)
            if self._stop.wait(self.config.sample_seconds):
                break
        del wait

    def _drain(self, deadline: float) -> bool:
        """Wait until every callback is settled and every queued message stored (True), or ``deadline``."""
        wait = threading.Event()
        while time.monotonic() < deadline:
            if self.sim.push.wait_idle(min(5.0, max(0.1, deadline - time.monotonic()))):
                stored = self.stored()
                if all(stored[k] > 0 for k in self._keys(self.sim.queued)):
                    return True
            wait.wait(1.0)  # the daemon polls every 5 s; look again after a second
        return False

    def _keys(self, read: Callable[[str], list[Any]]) -> collections.Counter[worldmod.Key]:
        found: collections.Counter[worldmod.Key] = collections.Counter()
        for account in ACCOUNTS:
            for message in read(account):
                found[(account, str(message.get("message")))] += 1
        return found

    def _query(self, statement: str) -> list[tuple[Any, ...]]:
        for attempt in range(3):
            if self._observer is None or self._observer.closed:
                self._observer = psycopg.connect(self.db_url, autocommit=True, application_name=pg.OBSERVER)
            try:
                return self._observer.execute(statement).fetchall()
            except psycopg.OperationalError:
                self._observer.close()
                if attempt == 2:  # three tries
                    raise
        raise AssertionError("unreachable")

    def stored(self) -> collections.Counter[worldmod.Key]:
        found: collections.Counter[worldmod.Key] = collections.Counter()
        for account, raw in self._query("SELECT account_name, raw_json FROM sms_history"):
            with contextlib.suppress(ValueError, AttributeError):
                found[(str(account), str(json.loads(raw).get("message")))] += 1
        return found

    def quarantined(self) -> list[tuple[str, bytes]]:
        return [(str(a), bytes(b)) for a, b in self._query("SELECT account_name, body FROM sms_quarantine")]

    def untimed(self) -> dict[worldmod.Key, list[str]]:
        return invariants.untimed_sources(
            self._query("SELECT account_name, raw_json, source FROM sms_history")
        )


def resources_lockout() -> int:
    from sync_worker import auth  # noqa: PLC0415  # only at the end of a soak

    return int(auth.VENDOR_LOCKOUT_AT)


def _some(keys: set[worldmod.Key]) -> str:
    shown = sorted(keys)[:3]
    return ", ".join(repr(text) for _, text in shown) + (" ..." if len(keys) > len(shown) else "")


def run(
    admin_url: str, template: str, config: SoakConfig, out: Callable[[str], None]
) -> soak_report.SoakResult:
    """A whole soak: start, ``config.minutes`` of faults and traffic, finish; ``out`` gets the report."""
    soak = Soak(admin_url, template, config)
    try:
        soak.start()
        out(
            f"{config.label}: daemon pid {soak.daemon.pid}, receiver pid {soak.receiver.pid}, "
            f"logs in {soak.logdir}"
        )
        soak.run(config.minutes * 60)
        result = soak.finish()
    finally:
        soak.close()
    for line in result.lines():
        out(f"{config.label}: {line}")
    for path in result.files:
        out(f"{config.label}: wrote {path}")
    return result
