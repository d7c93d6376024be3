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

At the end every fault stops and the traffic with it; then within ``DRAIN_SECONDS`` every pushed
callback must be settled and every queued message stored (I3, without a restart); then:

* I1: every message the platform counts as acknowledged (polled) or pushed with a 2xx is in
  ``sms_history`` exactly once (or kept with its bytes in ``sms_quarantine``). Counted apart, never
  silently: a final block the platform dequeued on delivery within ``FINAL_BLOCK_WINDOW`` seconds of
  a database fault, and then not stored (the platform's final-block rule, docs/testing.md); and a
  message without a timestamp that arrived both ways (stored by the receiver and polled, e.g. its 2xx
  was lost): two rows, one per way, as docs/schema.md ("Pushed messages") says (``split_doubles``);
* I2: the vendor's failed logins in a row stayed below 5;
* I5: ``resources.judge`` for the daemon and the receiver.

Outputs (``out_dir``): ``soak-resources.csv`` (every sample), ``soak-summary.md`` (the figures and
verdicts) and ``soak-resources.png`` (the chart, with matplotlib from the bench extra).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import psycopg
import requests

from sync_worker import secret, simulator
from sync_worker.simulator import wire
from tests.chaos import pg, procs, resources
from tests.chaos import world as worldmod
from tests.reliability import proxy

ACCOUNTS: Final = ("0252012345-00001", "0000000007-00002", "4200000000-00003")
PUSHED: Final = ACCOUNTS[:2]  # in push mode; the third is polled only
SMS_SERVICE: Final = "EnhancedConnectivityService"
LISTENER_USER: Final = "soak-listener"
LISTENER_PASSWORD: Final = "soak-listener-Pw-0123456789"
DRAIN_SECONDS: Final = 240.0
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
# The slow schedule's faults and their weights.
FAULTS: Final = (
    ("status", 20),
    ("lost_response", 8),
    ("timeout", 6),
    ("unreadable", 6),
    ("trickle", 4),
    ("login_refused", 5),
    ("expire", 6),
    ("lose_answers", 10),
    ("bad_listener_password", 5),
    ("db_terminate", 2),
    ("db_cut", 2),
    ("db_readonly", 1),
)


@dataclasses.dataclass
class SoakConfig:
    minutes: float
    seed: int = 1
    sample_seconds: float = 10.0
    fault_gap: tuple[float, float] = (10.0, 30.0)
    receiver_restarts: int = 3
    out_dir: Path | None = None
    label: str = "soak"


@dataclasses.dataclass
class SoakResult:
    """What a soak did, the figures and the verdicts."""

    seconds: float
    injected: int
    polled: int  # messages the platform counts as acknowledged (polled)
    pushed: int  # callbacks answered 2xx (a duplicate counted again)
    pushed_distinct: int
    stored: int
    faults: collections.Counter[str]
    receiver_restarts: int
    push_counters: dict[str, int]
    violations: list[str]
    platform_lost: int
    both_ways: int  # timestamp-less messages stored pushed and polled: two rows by design (docs/schema.md)
    drain_seconds: float | None
    peak_failed_logins: int
    daemon_exit: int | None
    samples: list[resources.Sample]
    verdicts: list[resources.Verdict]
    loadavg: tuple[str, str]  # at the start, at the end
    files: list[str] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations) or not all(v.flat for v in self.verdicts)

    def lines(self) -> list[str]:
        out = [
            f"{self.seconds / 60:.1f} min; {self.injected} messages injected, {self.polled} polled "
            f"(acknowledged), {self.pushed} callbacks answered 2xx "
            f"({self.pushed_distinct} distinct messages), "
            f"{self.stored} rows in sms_history; {sum(self.faults.values())} faults "
            f"({', '.join(f'{k} {n}' for k, n in sorted(self.faults.items()))}); receiver restarted "
            f"{self.receiver_restarts} times; push: {self.push_counters}",
            f"drained in {self.drain_seconds:.0f} s after the faults stopped"
            if self.drain_seconds is not None
            else f"NOT drained within {DRAIN_SECONDS:.0f} s",
            f"peak failed logins in a row: {self.peak_failed_logins}; daemon exit on SIGTERM: "
            f"{self.daemon_exit}; {self.platform_lost} lost by the platform's final-block rule; "
            f"{self.both_ways} timestamp-less message(s) arrived both ways, two rows each by design "
            "(docs/schema.md, Pushed messages); "
            f"load average {self.loadavg[0]} at the start, {self.loadavg[1]} at the end",
        ]
        out += [f"VIOLATION {v}" for v in self.violations]
        out += [v.line() for v in self.verdicts]
        return out


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
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
            procs._command(self.argv),  # the one way chaos starts a worker
            env=procs._environ(self.env),
            cwd=procs.REPO,
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
        self.callback_port = free_port()
        self.logdir = Path(tempfile.mkdtemp(prefix=f"chaos-{config.label}-"))
        base = {**self.sim.worker_env(accounts=ACCOUNTS), **WORKER_ENV}
        self.daemon = _Process(
            "daemon",
            ["run"],
            {
                **base,
                "SYNC_DATABASE_URL": self.daemon_proxy.conninfo(),
                "SYNC_METRICS_PORT": str(free_port()),
            },
            self.logdir,
        )
        self.receiver = _Process(
            "receiver",
            ["receive"],
            {
                **base,
                "SYNC_DATABASE_URL": self.receiver_proxy.conninfo(),
                "SYNC_CALLBACK_HOST": "127.0.0.1",
                "SYNC_CALLBACK_PORT": str(self.callback_port),
                "SYNC_CALLBACK_USERNAME": LISTENER_USER,
                "SYNC_CALLBACK_PASSWORD": LISTENER_PASSWORD,
            },
            self.logdir,
        )
        self.serial = dict.fromkeys(ACCOUNTS, 0)
        self.injected = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.db_fault_times: list[float] = []
        self.final_deliveries: list[tuple[float, str, list[Any]]] = []
        self.samples: list[resources.Sample] = []
        self.restarts = 0
        self.started = time.monotonic()
        self._observer: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)
        self._readonly_until: float | None = None
        self._listener_bad_until: float | None = None
        self.load_start = loadavg()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self.receiver.start()
        self._wait_listening()
        for account in PUSHED:
            self._register(account, LISTENER_PASSWORD)
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
            self._end_episodes(now)
            if restarts and now >= restarts[0]:
                restarts.pop(0)
                self.restart_receiver()
            elif now >= next_fault:
                self.fault(self.rng.choices([f for f, _ in FAULTS], weights=[w for _, w in FAULTS])[0])
                next_fault = time.monotonic() + self.rng.uniform(*self.config.fault_gap)
            if self.daemon.pid is None:
                # The daemon died on its own: a finding, not something to restart quietly.
                break
            pause.wait(1.0)  # pacing of the traffic, one round a second; nothing waits on it

    def finish(self) -> SoakResult:
        """Stop the faults and the traffic, let it drain, check, stop the processes, write the outputs."""
        violations: list[str] = []
        self._end_episodes(float("inf"))
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
        drained = self._drain(faults_end + DRAIN_SECONDS)
        drain_seconds = time.monotonic() - faults_end if drained else None
        if not drained:
            violations.append(f"I3: not drained within {DRAIN_SECONDS:.0f} s after the faults stopped")
        self._stop.set()
        self._sampler.join(timeout=30)
        end_t = time.monotonic() - self.started
        # I1 over everything handed over: polled (acknowledged) and pushed with a 2xx.
        stored = self.stored()
        kept = self.quarantined()
        polled = self._keys(self.sim.acknowledged)
        pushed = self._keys(self.sim.pushed)
        expected = set(polled) | set(pushed)
        doubled, both_ways = split_doubles(stored, self.untimed())
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
        result = SoakResult(
            seconds=end_t,
            injected=self.injected,
            polled=sum(polled.values()),
            pushed=sum(pushed.values()),
            pushed_distinct=len(pushed),
            stored=sum(stored.values()),
            faults=self.faults,
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
            result.files = write_outputs(result, self.config.out_dir, self.config.label)
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
        if self._readonly_until is not None:
            self.dbs.read_only(self.db_url, False)
        self.dbs.drop_later(self.db_url)
        self.dbs.close()

    # --- traffic and faults ------------------------------------------------------------

    def inject(self, account: str, n: int) -> None:
        start = self.serial[account]
        self.sim.inject(account, worldmod.make_messages(account, start, n))
        self.serial[account] = start + n
        self.injected += n

    def fault(self, kind: str) -> None:  # one branch per kind of fault
        """Fire one fault of the slow schedule."""
        self.faults[kind] += 1
        faults, rng = self.sim.faults, self.rng
        if kind == "status":
            status = rng.choice((500, 502, 503, 504, 429, 408))
            retry_after = rng.choice((None, "1", "0", "3", "garbage", "86400", "-5"))
            headers = (("Retry-After", retry_after),) if retry_after is not None else ()
            body = wire.m2m_error(wire.CODE_UNEXPECTED, "soak")
            faults.script("history", [simulator.Raw(status, body, (*wire.JSON_HEADERS, *headers))])
        elif kind in ("lost_response", "timeout"):
            faults.script("history", [kind])
        elif kind == "unreadable":
            faults.script("history", [simulator.Mangle(rng.choice(("cut_short", "not_json", "empty_200")))])
        elif kind == "trickle":
            faults.script("history", [simulator.Trickle(512, 0.01)])
        elif kind == "login_refused":
            which = rng.choice(("login", "token"))
            step: Any = rng.choice((503, 429, simulator.gateway_error_after_processing(504)))
            faults.script(which, [step])
        elif kind == "expire":
            faults.script("history", [rng.choice(("expire_session", "expire_bearer"))])
        elif kind == "lose_answers":
            self.sim.push.lose_answers(rng.randint(1, 5))
        elif kind == "bad_listener_password":
            # Callbacks carry a password the receiver refuses (401) until it is registered again.
            account = rng.choice(PUSHED)
            self._register(account, "soak-listener-stale-Pw-000000")
            self._listener_bad_until = time.monotonic() + rng.uniform(3, 10)
        elif kind == "db_terminate":
            self.db_fault_times.append(time.monotonic())
            self.dbs.terminate_all(self.db_url)
        elif kind == "db_cut":
            self.db_fault_times.append(time.monotonic())
            target = rng.choice((self.daemon_proxy, self.receiver_proxy))
            target.cut()
            target.restore()
        elif kind == "db_readonly":
            self.db_fault_times.append(time.monotonic())
            self.dbs.read_only(self.db_url, True)
            self.dbs.terminate_all(self.db_url)
            self._readonly_until = time.monotonic() + rng.uniform(3, 8)

    def _end_episodes(self, now: float) -> None:
        if self._readonly_until is not None and now >= self._readonly_until:
            self.dbs.read_only(self.db_url, False)
            self.db_fault_times.append(time.monotonic())
            self._readonly_until = None
        if self._listener_bad_until is not None and now >= self._listener_bad_until:
            for account in PUSHED:
                self._register(account, LISTENER_PASSWORD)
            self._listener_bad_until = None

    def restart_receiver(self) -> None:
        """The receiver stopped (SIGTERM or SIGKILL, alternately), down 3-8 s, started again."""
        sig = signal.SIGTERM if self.restarts % 2 == 0 else signal.SIGKILL
        self.restarts += 1
        self.faults["receiver_restart"] += 1
        self.receiver.stop(sig)
        threading.Event().wait(self.rng.uniform(3, 8))  # down: callbacks are refused, then retried
        self.receiver.start()
        self._wait_listening()

    # --- the platform side ---------------------------------------------------------------

    def _register(self, account: str, password: str) -> None:
        register_listener(self.sim, account, self.callback_port, password)

    def _start_callbacks(self) -> None:
        start_callbacks(self.sim, PUSHED)

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
            if any(abs(at - f) <= FINAL_BLOCK_WINDOW for f in self.db_fault_times):
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
        return untimed_sources(self._query("SELECT account_name, raw_json, source FROM sms_history"))


def untimed_sources(rows: list[tuple[Any, ...]]) -> dict[worldmod.Key, list[str]]:
    """The ``source`` of each stored row of a message without a timestamp, by message
    (``(account, raw_json, source)`` rows)."""
    out: dict[worldmod.Key, list[str]] = collections.defaultdict(list)
    for account, raw, source in rows:
        with contextlib.suppress(ValueError, AttributeError):
            obj = json.loads(raw)
            if obj.get("timestamp") is None:
                out[(str(account), str(obj.get("message")))].append(str(source))
    return out


def split_doubles(
    stored: collections.Counter[worldmod.Key], untimed: dict[worldmod.Key, list[str]]
) -> tuple[set[worldmod.Key], set[worldmod.Key]]:
    """(stored more than once: broken I1; stored twice by design: a message without a timestamp that
    arrived both ways, one row pushed and one polled, which docs/schema.md "Pushed messages" says
    cannot be matched: its callback's 2xx was lost, or it went back to the queue after an attempt
    that had stored it)."""
    doubled = {k for k, n in stored.items() if n > 1}
    both_ways = {k for k in doubled if sorted(untimed.get(k, ())) == ["poll", "push"]}
    return doubled - both_ways, both_ways


def register_listener(sim: simulator.Simulator, account: str, port: int, password: str) -> None:
    """Register (replace) ``account``'s SMS listener, the receiver on ``port``, straight in the
    simulator (as the operator's ``callbacks register`` would; no login counted)."""
    body = json.dumps(
        {
            "name": SMS_SERVICE,
            "url": f"http://127.0.0.1:{port}/callbacks/{account}",
            "username": LISTENER_USER,
            "password": password,
        }
    ).encode()
    reply = sim.push.register(account, body)
    if reply[0] != 200:  # the platform's success
        raise RuntimeError(f"registering the listener of {account} failed: {reply[0]}")


def start_callbacks(sim: simulator.Simulator, accounts: tuple[str, ...]) -> None:
    """``startCallbacks`` for ``accounts`` over HTTP, as ``start-delivery`` does (one portal login)."""
    http = requests.Session()
    http.trust_env = False
    origin = f"http://127.0.0.1:{sim.port}"
    try:
        token = http.post(
            f"{origin}/api/ts/v1/oauth2/token",
            auth=(worldmod.CLIENT_ID, worldmod.CLIENT_SECRET),
            data={"grant_type": "client_credentials"},
            timeout=10,
        ).json()["access_token"]
        session = http.post(
            f"{origin}/api/m2m/v1/session/login",
            headers={"Authorization": f"Bearer {token}"},
            json={"username": worldmod.USERNAME, "password": worldmod.PASSWORD},
            timeout=10,
        ).json()["sessionToken"]
        headers = {"Authorization": f"Bearer {token}", "VZ-M2M-Token": session}
        for account in accounts:
            answer = http.put(
                f"{origin}/api/m2m/v1/sms/{account}/startCallbacks", headers=headers, timeout=10
            )
            answer.raise_for_status()
    finally:
        http.close()


def resources_lockout() -> int:
    from sync_worker import auth  # noqa: PLC0415  # only at the end of a soak

    return int(auth.VENDOR_LOCKOUT_AT)


def _some(keys: set[worldmod.Key]) -> str:
    shown = sorted(keys)[:3]
    return ", ".join(repr(text) for _, text in shown) + (" ..." if len(keys) > len(shown) else "")


def write_outputs(result: SoakResult, out_dir: Path, label: str) -> list[str]:
    """``<label>-resources.csv``, ``<label>-summary.md`` and ``<label>-resources.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{label}-resources.csv"
    csv.write_text(
        "\n".join([resources.CSV_HEADER, *(resources.csv_line(s) for s in result.samples)]) + "\n",
        encoding="utf-8",
    )
    png = out_dir / f"{label}-resources.png"
    charted = resources.chart(
        result.samples,
        png,
        f"{label}: sync-worker run + receive, {result.seconds / 60:.0f} min under a slow fault schedule",
    )
    md = out_dir / f"{label}-summary.md"
    md.write_text(
        "\n".join(
            [
                f"# {label}",
                "",
                *(f"* {line}" for line in result.lines()),
                "",
                resources.markdown(result.verdicts, result.samples),
                "",
                _minute_table(result.samples),
                "",
            ]
        ),
        encoding="utf-8",
    )
    return [str(csv), str(md)] + ([str(png)] if charted else [])


def _minute_table(samples: list[resources.Sample], rows: int = 7) -> str:
    """The figures of each process at ``rows`` moments spread over the run (first sample at or after)."""
    if not samples:
        return "(no samples)"
    end = samples[-1].t
    lines = [
        "| minute | daemon RSS MiB | daemon files | daemon threads | daemon DB conns | receiver RSS MiB | "
        "receiver files | receiver threads | receiver DB conns |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(rows):
        at = end * i / (rows - 1)
        cells = [f"{at / 60:.1f}"]
        for role in ("daemon", "receiver"):
            s = next((x for x in samples if x.role == role and x.t >= at), None)
            if s is None:
                s = next((x for x in reversed(samples) if x.role == role), None)
            cells += (
                ["-"] * 4
                if s is None
                else [f"{s.rss_mib:g}", str(s.open_files), str(s.threads), str(s.db_connections)]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(admin_url: str, template: str, config: SoakConfig, out: Callable[[str], None]) -> SoakResult:
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
