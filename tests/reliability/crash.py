"""Crash harness: SIGKILL a real worker process at seeded moments, then prove nothing was lost.

The worker runs as ``python -m sync_worker once`` against a simulator in this process (plain
http on loopback, ``THINGSPACE_ALLOW_INSECURE_LOOPBACK=1``) and a real Postgres database. Each
cycle starts a worker and kills it with one of these strategies (chosen by a seeded RNG):

* ``timer``: at a random time after start (start-up, login, paging, committing: anywhere);
* ``in_txn``: when the worker's database session is seen inside a block transaction
  (``pg_stat_activity``: ``idle in transaction`` or an active statement on ``sms_history``);
* ``before_ack``: when the acknowledging ``GET ...?next=T`` arrives at the simulator, the worker is
  killed first and the request is dropped unprocessed: the block is committed, its ack never sent;
* ``after_ack``: same moment, but the simulator processes the request after the kill: the block is
  committed and acknowledged, the worker never sees the answer.

When a worker drains everything before its trigger fires, a new wave of messages is injected.
After the kills a clean run must exit 0, and the table must hold exactly the delivered set:
everything the simulator dequeued plus what it handed out and still holds (the final block in
``on_next_get`` mode), each once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sync_worker import secret, simulator
from tests.reliability import logbook

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ("timer", "in_txn", "before_ack", "after_ack")


class HookedSimulator(simulator.Simulator):
    """The simulator with a record of every final block it wrote out and every token it issued.

    Issued bearer and session tokens go to the logbook's secret list, since only the worker
    process (not this one) registers them. The harness drops acknowledging requests through
    ``hooks.drop``; ``hooks.rewrite`` and ``hooks.answered`` stay free for tests.
    """

    def __init__(self, config: simulator.SimConfig, faults: simulator.Faults | None = None) -> None:
        super().__init__(config, faults)
        # Which worker is running now (set by the harness), and every final block the simulator
        # wrote out, tagged with that worker: (generation, account, messages).
        self.generation = 0
        self.final_deliveries: list[tuple[int, str, list[Any]]] = []
        self.hooks.final_block = self._final_block_written
        self.hooks.issued = _register_issued

    def _final_block_written(self, account: str, messages: list[Any]) -> None:
        self.final_deliveries.append((self.generation, account, messages))


def _register_issued(_kind: str, token: str) -> None:
    logbook.add_secret(token)


def crash_sim_config(accounts: tuple[str, ...], *, final_ack: str, token_mode: str) -> simulator.SimConfig:
    """Simulator settings with per-run credentials, so the leak check has fresh values to look for."""
    tag = os.urandom(6).hex()
    return simulator.SimConfig(
        host="127.0.0.1",
        port=0,
        accounts=accounts,
        final_ack=final_ack,  # type: ignore[arg-type]
        token_mode=token_mode,  # type: ignore[arg-type]
        client_id=f"crash-client-{tag}",
        client_secret=secret.Secret(f"crash-Secret-{tag}-$(x)&y=1"),
        username=f"crash-user-{tag}",
        password=secret.Secret(f"crash-Pw-{tag}-'\";--"),
    )


def worker_env(
    sim: simulator.Simulator, db_url: str, accounts: tuple[str, ...], **extra: str
) -> dict[str, str]:
    """A ``sync-worker`` subprocess's environment: JSON logs at INFO, one connection per account."""
    env = sim.worker_env(
        accounts=accounts,
        database_url=db_url,
        inherit=True,
        SYNC_CONCURRENCY=str(len(accounts)),
        SYNC_LOG_FORMAT="json",
        SYNC_LOG_LEVEL="INFO",
        # Kills are the faults here; retries stay short so a dropped request costs little.
        THINGSPACE_READ_TIMEOUT="20",
        THINGSPACE_RETRY_MAX_WAIT="0.2",
        # Output reaches the logbook even from a worker killed mid-write.
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Worker:
    """One ``python -m sync_worker`` subprocess; its output goes to the logbook when it ends."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        # Files, not pipes: a chatty worker must never block on a full pipe buffer.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115  # closed in _collect
        self._err = tempfile.TemporaryFile()  # noqa: SIM115  # closed in _collect
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sync_worker", *args],
            env=env,
            cwd=REPO,
            stdout=self._out,
            stderr=self._err,
        )
        self.killed = threading.Event()
        self._kill_lock = threading.Lock()
        self.stdout = self.stderr = ""

    def kill(self) -> bool:
        """SIGKILL and reap; True when this call killed a still-running worker."""
        with self._kill_lock:
            if self.proc.poll() is not None:
                return False
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.killed.set()
            return True

    def output_so_far(self) -> str:
        """What the worker has written to stdout and stderr up to now (it may still run)."""
        chunks = []
        for fh in (self._out, self._err):
            if fh.closed:
                continue
            chunks.append(os.pread(fh.fileno(), 1 << 24, 0).decode("utf-8", "replace"))
        return "".join(chunks) or self.stdout + self.stderr

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        self._collect()
        return rc

    def _collect(self) -> None:
        for attr, fh in (("stdout", self._out), ("stderr", self._err)):
            fh.seek(0)
            setattr(self, attr, fh.read().decode("utf-8", "replace"))
            fh.close()
        logbook.record_process_output(self.name, self.stdout, self.stderr)


class TxnWatcher(threading.Thread):
    """Kills the worker once it has been seen inside its (skip+1)-th distinct block transaction."""

    def __init__(self, db_url: str, worker: Worker, skip: int) -> None:
        super().__init__(daemon=True)
        self.db_url, self.worker, self.skip = db_url, worker, skip
        self.stop = threading.Event()
        self.fired = False

    def run(self) -> None:
        seen: set[tuple[int, Any]] = set()
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            dbname = conn.info.dbname
            while not self.stop.is_set() and self.worker.proc.poll() is None:
                rows = conn.execute(
                    "SELECT pid, xact_start FROM pg_stat_activity WHERE datname = %s"
                    " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                    " AND (state = 'idle in transaction'"
                    "      OR (state = 'active' AND query ILIKE %s))",
                    (dbname, "%sms_history%"),
                ).fetchall()
                for pid, started in rows:
                    seen.add((pid, started))
                if len(seen) > self.skip:
                    self.fired = self.worker.kill()
                    return


@dataclasses.dataclass
class CrashReport:
    final_ack: str
    token_mode: str
    seed: int
    accounts: int
    kills: int = 0
    kills_by_strategy: dict[str, int] = dataclasses.field(default_factory=dict)
    worker_starts: int = 0
    clean_exits_before_trigger: int = 0
    waves: int = 0
    injected: int = 0
    expected: int = 0
    rows: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    final_exit: int | None = None
    history_requests: int = 0
    acks: int = 0
    token_replays: int = 0
    invalid_token_errors: int = 0
    logins: int = 0
    db_replays: int = 0
    runs: int = 0
    seconds: float = 0.0
    missing_examples: list[str] = dataclasses.field(default_factory=list)
    # Final blocks handed out to a worker that was then killed (committed or not).
    final_blocks_delivered_to_killed: int = 0
    lost_on_delivery: int = 0
    missing_unexplained: int = 0

    def line(self) -> str:
        return (
            f"final_ack={self.final_ack} token_mode={self.token_mode} seed={self.seed}: "
            f"{self.kills} kills {self.kills_by_strategy}, {self.injected} messages on "
            f"{self.accounts} accounts, expected {self.expected}, rows {self.rows}, "
            f"missing {self.missing} (in final blocks handed to a killed worker and dequeued unasked: "
            f"{self.lost_on_delivery} in {self.final_blocks_delivered_to_killed} blocks; unexplained: "
            f"{self.missing_unexplained}), duplicated {self.duplicated}, "
            f"unexpected {self.unexpected}; worker starts {self.worker_starts}, history GETs "
            f"{self.history_requests}, acks {self.acks}, token replays {self.token_replays}, "
            f"InvalidNextToken {self.invalid_token_errors}, logins {self.logins}, rows re-received "
            f"(replays) {self.db_replays}, runs {self.runs}, {self.seconds:.0f}s"
        )


def make_messages(account: str, start: int, n: int, seed: int) -> list[dict[str, Any]]:
    """Distinct, realistic messages (a unique serial in the text: every one must be one row)."""
    rng = random.Random(f"{seed}-{account}-{start}")
    kinds = ("imei", "iccid", "mdn", "MSISDN", "meid")
    out = []
    for i in range(start, start + n):
        out.append(
            {
                "deviceIds": [{"id": f"00{rng.randrange(10**13):013d}", "kind": rng.choice(kinds)}],
                "message": f"{account} #{i} temp={rng.uniform(-20, 40):.1f} \u00e9\U0001f50b",
                "timestamp": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
                + rng.choice(("Z", "+00:00", "-08:00", ".123Z")),
            }
        )
    return out


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True)


class CrashHarness:
    def __init__(
        self,
        sim: HookedSimulator,
        db_url: str,
        accounts: tuple[str, ...],
        *,
        messages: int,
        kills: int,
        seed: int,
        cycle_timeout: float = 120.0,
        strategies: tuple[str, ...] = STRATEGIES,
    ) -> None:
        self.sim, self.db_url, self.accounts = sim, db_url, accounts
        self.messages, self.target_kills, self.seed = messages, kills, seed
        self.cycle_timeout = cycle_timeout
        self.strategies = strategies
        self.rng = random.Random(seed)
        self.next_serial = dict.fromkeys(accounts, 0)
        self.report = CrashReport(sim.config.final_ack, sim.config.token_mode, seed, len(accounts))
        self.killed_generations: set[int] = set()

    def inject(self, account: str, n: int) -> None:
        start = self.next_serial[account]
        self.sim.inject(account, make_messages(account, start, n, self.seed))
        self.next_serial[account] = start + n
        self.report.injected += n

    def env(self) -> dict[str, str]:
        return worker_env(self.sim, self.db_url, self.accounts)

    def run(self) -> CrashReport:
        started = time.monotonic()
        per_account = self.messages // len(self.accounts)
        for account in self.accounts:
            self.inject(account, per_account)
        cycles = 0
        while self.report.kills < self.target_kills:
            cycles += 1
            if cycles > self.target_kills * 4 + 20:
                raise AssertionError(f"could not land {self.target_kills} kills: {self.report.line()}")
            self._cycle(cycles)
        self.sim.generation = -1
        final = Worker(["once"], self.env(), "crash-final")
        self.report.worker_starts += 1
        self.report.final_exit = final.wait(self.cycle_timeout * 2)
        self._verify()
        self.report.seconds = time.monotonic() - started
        return self.report

    def _cycle(self, n: int) -> None:
        strategy = self.rng.choice(self.strategies)
        skip = self.rng.randrange(0, 6)
        self.sim.generation = n
        worker = Worker(["once"], self.env(), f"crash-worker-{n}")
        self.report.worker_starts += 1
        watcher: TxnWatcher | None = None
        timer: threading.Timer | None = None
        if strategy == "timer":
            timer = threading.Timer(self.rng.uniform(0.3, 3.0), worker.kill)
            timer.start()
        elif strategy == "in_txn":
            watcher = TxnWatcher(self.db_url, worker, skip)
            watcher.start()
        else:
            self.sim.hooks.drop = self._ack_hook(worker, strategy, skip)
        try:
            worker.wait(self.cycle_timeout)
        finally:
            self.sim.hooks.drop = None
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.stop.set()
                watcher.join()
        if worker.killed.is_set():
            self.killed_generations.add(n)
            self.report.kills += 1
            self.report.kills_by_strategy[strategy] = self.report.kills_by_strategy.get(strategy, 0) + 1
        else:
            # Drained before the trigger: more traffic, so later kills have work to interrupt.
            self.report.clean_exits_before_trigger += 1
            self.report.waves += 1
            for account in self.rng.sample(self.accounts, k=max(1, len(self.accounts) // 2)):
                self.inject(account, self.rng.randrange(50, 1500))

    def _ack_hook(self, worker: Worker, strategy: str, skip: int) -> Callable[[simulator.Request], bool]:
        """A ``hooks.drop`` that kills the worker at its (skip+1)-th acknowledging history request;
        ``before_ack`` also drops that request unprocessed, ``after_ack`` lets it be processed."""
        remaining = [skip]
        lock = threading.Lock()

        def hook(request: simulator.Request) -> bool:
            if request.kind != "history" or "next=" not in request.query:
                return False
            with lock:
                if remaining[0] > 0:
                    remaining[0] -= 1
                    return False
                remaining[0] = 10**9
            worker.kill()
            return strategy == "before_ack"

        return hook

    def _verify(self) -> None:
        cmp = compare(self.sim, self.db_url, self.accounts)
        r = self.report
        # A final block handed to a worker that then died before committing it is lost when the
        # platform dequeues it without a request naming it: on delivery (on_delivery), or on the
        # next head GET, which is the only way back once a single-use token was rejected
        # (on_next_get + single_use). No client can prevent either; count them apart.
        at_risk: collections.Counter[tuple[str, str]] = collections.Counter()
        for generation, account, block in self.sim.final_deliveries:
            if generation in self.killed_generations:
                r.final_blocks_delivered_to_killed += 1
                for msg in block:
                    at_risk[(account, _canon(msg))] += 1
        missing = delivered(self.sim, self.accounts) - stored(self.db_url)
        r.lost_on_delivery = sum((missing & at_risk).values())
        r.missing_unexplained = sum((missing - at_risk).values())
        r.expected, r.rows, r.missing = cmp.expected, cmp.rows, cmp.missing
        r.duplicated, r.unexpected, r.missing_examples = cmp.duplicated, cmp.unexpected, cmp.missing_examples
        r.db_replays, r.runs = cmp.db_replays, cmp.runs
        stats = self.sim.stats
        r.history_requests = stats.history_requests
        r.acks = stats.acks
        r.token_replays = stats.replays
        r.logins = stats.logins
        r.invalid_token_errors = sum(
            1 for rec in list(stats.requests) if rec.kind == "history" and rec.status == 400
        )


@dataclasses.dataclass
class Comparison:
    expected: int
    rows: int
    missing: int
    duplicated: int
    unexpected: int
    missing_examples: list[str]
    db_replays: int
    runs: int

    @property
    def exact(self) -> bool:
        return (self.missing, self.duplicated, self.unexpected) == (0, 0, 0) and self.rows == self.expected


def delivered(sim: simulator.Simulator, accounts: tuple[str, ...]) -> collections.Counter[tuple[str, str]]:
    """The delivered set: everything dequeued plus what is still queued (handed out or not)."""
    expected: collections.Counter[tuple[str, str]] = collections.Counter()
    for account in accounts:
        for msg in sim.acknowledged(account) + sim.queued(account):
            expected[(account, _canon(msg))] += 1
    return expected


def stored(db_url: str) -> collections.Counter[tuple[str, str]]:
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        for account, raw_json in conn.execute("SELECT account_name, raw_json FROM sms_history"):
            found[(account, _canon(json.loads(raw_json)))] += 1
    return found


def row_count(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sms_history").fetchone()
    return int(row[0]) if row else 0


def compare(sim: simulator.Simulator, db_url: str, accounts: tuple[str, ...]) -> Comparison:
    expected = delivered(sim, accounts)
    found = stored(db_url)
    missing = expected - found
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(replays), 0), count(*) FROM sync_run").fetchone()
    replays, runs = row if row else (0, 0)
    return Comparison(
        expected=sum(expected.values()),
        rows=sum(found.values()),
        missing=sum(missing.values()),
        duplicated=sum(c - 1 for c in found.values() if c > 1),
        unexpected=sum((found - expected).values()),
        missing_examples=[m[1][:120] for m in list(missing)[:5]],
        db_replays=int(replays),
        runs=int(runs),
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``condition`` (a state check, not a timing guess) until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(step)
