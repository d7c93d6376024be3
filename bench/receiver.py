"""``python -m bench.receiver``: the callback receiver under load (issue 24), three runs.

The receiver runs as ``sync-worker receive`` in a process of its own (its threads, RSS and
database sessions are its own), against a fresh migrated database; wrk (Debian's package) posts
unique authenticated callbacks in the ``...Response`` envelope shape from a Lua script:

1. ``plain``: 64 connections, 15 s: callbacks/s, p50/p99, and every 2xx is a row;
2. ``stalled``: the same beside 1,000 connections that sent half a request and stall: the
   receiver's threads, RSS, database sessions and callbacks/s;
3. ``lock``: the same load with ``sms_message`` locked (ACCESS EXCLUSIVE, as a maintenance
   statement or a partition drop would) for 5 s from the 5th second: 503s and their Retry-After,
   sessions never above the pool, and the rate after the lock against the rate before it.

A sampler reads, every 250 ms, the receiver's thread count and RSS (``/proc``), its database
sessions (``pg_stat_activity``) and its ``callbacks_stored`` counter (``/metrics``).
"Every 2xx is a row": wrk counts the 2xx answers; each callback carries one new message, so the
history must hold at least that many rows (it may hold up to one more per connection: callbacks
committed whose answer wrk stopped waiting for when the time was up). The per-callback proof is in
the tests (tests/integration/test_receiver_group_commit.py).

``--tree DIR`` measures another checkout's worker (e.g. ``git archive`` of an older commit) with
this script. ``--readme`` writes the results between this benchmark's markers in bench/README.md.
These are measurements, not tests: nothing fails on a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench import harness, in_tree, pg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ACCOUNT = "0252012345-00001"
USER = "bench-listener"
PASSWORD = "bench-listener-password-0123456789"  # a benchmark value
APP_NAME = "sync-worker"
README_BEGIN = "<!-- bench-receiver:begin -->"
README_END = "<!-- bench-receiver:end -->"
SAMPLE_SECONDS = 0.25
# Of this run alone: another checkout's benchmark may use the same server at the same time.
DATABASE = f"bench_receiver_{os.getpid()}"
TEMPLATE = f"bench_receiver_template_{os.getpid()}"

# Unique callbacks, one message each, in the envelope shape with upper-case device kinds (as pushed).
# wrk's Lua: setup() runs per thread in the main state, init/request/response/done in each thread's.
_LUA = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  n = 0; ok = 0; busy = 0; busy_retry = 0; other = 0
  prefix = args[1] or "run"
end
function request()
  n = n + 1
  local device = string.format("35%013d", tid * 1000000000 + n)
  local body = string.format(
    '{"username":"%s","password":"%s","requestId":"%s-%d-%d",' ..
    '"deviceIds":[{"id":"%s","kind":"IMEI"}],"callbackCount":1,"maxCallbackThreshold":4,' ..
    '"enhancedConnectivityResponse":{"deviceIds":[{"id":"%s","kind":"IMEI"}],' ..
    '"message":"%s reading %d from thread %d","timestamp":"2026-03-01T10:00:00Z"}}',
    "__USER__", "__PASSWORD__", prefix, tid, n, device, device, prefix, n, tid)
  return wrk.format("POST", "/callbacks/__ACCOUNT__", {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1
  elseif status == 503 then
    busy = busy + 1
    -- Header names are case-insensitive (RFC 9110); granian (hyper) sends them lower case.
    if headers["Retry-After"] or headers["retry-after"] then busy_retry = busy_retry + 1 end
  else other = other + 1 end
end
function done(summary, latency, requests)
  local t = {ok = 0, busy = 0, busy_retry = 0, other = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format(
    '{"wrk": true, "requests": %d, "duration_us": %d, "ok": %d, "busy": %d, "busy_retry_after": %d, ' ..
    '"other": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, t.ok, t.busy, t.busy_retry, t.other,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclasses.dataclass
class Sample:
    at: float
    threads: int
    rss_kib: int
    sessions: int
    stored: float
    failed: float  # callbacks answered 503/500 so far


@dataclasses.dataclass
class Run:
    name: str
    wrk: dict[str, Any]
    samples: list[Sample]
    rows: int
    callbacks: int
    started: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.wrk["duration_us"]) / 1e6

    @property
    def rate(self) -> float:
        return float(self.wrk["ok"]) / self.seconds

    def most(self, field: str) -> int:
        return max((int(getattr(s, field)) for s in self.samples), default=0)

    def rate_between(self, start: float, end: float) -> float | None:
        """Callbacks stored per second between ``start`` and ``end`` seconds into the run."""
        inside = [s for s in self.samples if start <= s.at - self.started <= end]
        if len(inside) < 2 or inside[-1].at == inside[0].at:
            return None
        return (inside[-1].stored - inside[0].stored) / (inside[-1].at - inside[0].at)

    def last_failure(self) -> float | None:
        """Seconds into the run of the first sample after which no callback failed any more."""
        last = None
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            if after.failed > before.failed:
                last = after.at - self.started
        return last

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "wrk": self.wrk,
            "rows": self.rows,
            "callbacks": self.callbacks,
            "rate": self.rate,
            "most_threads": self.most("threads"),
            "most_rss_kib": self.most("rss_kib"),
            "most_sessions": self.most("sessions"),
            **self.extra,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_status(pid: int) -> tuple[int, int]:
    """(threads, VmRSS KiB) of ``pid``."""
    threads = rss = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, rss


def _metrics(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _metric(metrics_port: int, prefix: str, text: str | None = None) -> float:
    """The sum of the receiver's samples whose line starts with ``prefix`` (in ``text``, if given)."""
    if text is None:
        text = _metrics(metrics_port)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _stored(metrics_port: int, text: str | None = None) -> float:
    return _metric(metrics_port, "thingspace_sync_callbacks_stored_total{", text)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (/proc/PID/stat), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Receiver:
    """``sync-worker receive`` in a child process, with its metrics server."""

    def __init__(self, dsn: str, tree: Path | None, log: Path) -> None:
        self.port = _free_port()
        self.metrics_port = _free_port()
        env = dict(os.environ)
        env.update(
            SYNC_DATABASE_URL=dsn,
            SYNC_ACCOUNTS=ACCOUNT,
            SYNC_CALLBACK_USERNAME=USER,
            SYNC_CALLBACK_PASSWORD=PASSWORD,
            SYNC_CALLBACK_HOST="127.0.0.1",
            SYNC_CALLBACK_PORT=str(self.port),
            SYNC_METRICS_PORT=str(self.metrics_port),
            SYNC_LOG_FORMAT="json",
        )
        if tree is not None:
            env = in_tree.env_for(tree, env)
            argv = in_tree.argv(tree, "receive")
        else:
            argv = [sys.executable, "-m", "sync_worker", "receive"]
        self._log = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=tree or ROOT, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 60
        while True:
            try:
                _stored(self.metrics_port)
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the receiver did not start; see {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Sampler(threading.Thread):
    def __init__(self, receiver: Receiver, dsn: str) -> None:
        super().__init__(name="sampler", daemon=True)
        self.receiver = receiver
        self.dsn = dsn
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        # The receiver's Postgres backends seen (same machine: their CPU is read from /proc).
        self.backends: set[int] = set()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.halt.is_set():
                threads, rss = _proc_status(self.receiver.proc.pid)
                pids = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = %s AND pid <> pg_backend_pid()",
                        (APP_NAME,),
                    )
                ]
                self.backends.update(pids)
                try:
                    # One scrape a sample: rendering every metric is the receiver's CPU, taken
                    # from the load measured.
                    text = _metrics(self.receiver.metrics_port)
                    stored = _stored(self.receiver.metrics_port, text)
                    failed = _metric(
                        self.receiver.metrics_port, "thingspace_sync_callback_store_failures_total{", text
                    )
                except OSError:
                    stored = self.samples[-1].stored if self.samples else 0.0
                    failed = self.samples[-1].failed if self.samples else 0.0
                sessions = len(pids)
                self.samples.append(Sample(time.monotonic(), threads, rss, sessions, stored, failed))
                self.halt.wait(SAMPLE_SECONDS)


@contextlib.contextmanager
def stalled_clients(port: int, count: int) -> Iterator[None]:
    """``count`` connections that each sent half a callback request and then nothing."""
    head = (
        f"POST /callbacks/{ACCOUNT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 400\r\n\r\n"
        '{"username": "'
    ).encode()
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            sock.sendall(head)
        yield


def _wrk(port: int, script: Path, prefix: str, connections: int, seconds: int) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    url = f"http://127.0.0.1:{port}"
    out = subprocess.run([*argv, url, "--", prefix], capture_output=True, text=True, check=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith('{"wrk"'):
            found: dict[str, Any] = json.loads(line)
            return found
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def _counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM sms_history").fetchone()
        kept = conn.execute("SELECT count(*) FROM sms_callback").fetchone()
    return (int(rows[0]) if rows else 0, int(kept[0]) if kept else 0)


def one_run(
    name: str,
    admin: str,
    tree: Path | None,
    script: Path,
    log: Path,
    *,
    connections: int,
    seconds: int,
    stalled: int = 0,
    lock_at: float | None = None,
    lock_for: float = 5.0,
) -> Run:
    dsn = pg.fresh_database(admin, DATABASE, TEMPLATE)
    receiver = Receiver(dsn, tree, log)
    sampler = Sampler(receiver, dsn)
    extra: dict[str, Any] = {}
    try:
        with stalled_clients(receiver.port, stalled):
            sampler.start()
            holder: threading.Thread | None = None
            started = time.monotonic()
            if lock_at is not None:

                def hold() -> None:
                    time.sleep(lock_at)
                    with psycopg.connect(dsn) as conn:
                        conn.execute("LOCK TABLE sms_message IN ACCESS EXCLUSIVE MODE")
                        extra["lock_taken"] = time.monotonic() - started
                        time.sleep(lock_for)
                        conn.rollback()
                        extra["lock_released"] = time.monotonic() - started

                holder = threading.Thread(target=hold, name="lock-holder")
                holder.start()
            cpu_before = _cpu_seconds([receiver.proc.pid])
            result = _wrk(receiver.port, script, name, connections, seconds)
            extra["receiver_cpu_s"] = _cpu_seconds([receiver.proc.pid]) - cpu_before
            if holder is not None:
                holder.join()
            # The last sample after every answer: the counter and the sessions at rest.
            time.sleep(0.3)
            sampler.halt.set()
            sampler.join()
            extra["threads_with_stalled"] = _proc_status(receiver.proc.pid)[0]
            # Whole-life CPU of the backends (they serve nothing but this run).
            extra["postgres_cpu_s"] = _cpu_seconds(sorted(sampler.backends))
            batches = _metric(receiver.metrics_port, "thingspace_sync_callback_commit_batch_size_count")
            batched = _metric(receiver.metrics_port, "thingspace_sync_callback_commit_batch_size_sum")
            extra["transactions"] = batches
            extra["callbacks_per_transaction"] = batched / batches if batches else None
    finally:
        receiver.stop()
    rows, kept = _counts(dsn)
    return Run(name, result, sampler.samples, rows, kept, started, extra)


def _template(admin: str) -> None:
    """A migrated database of this benchmark's own to clone (others may share the server)."""
    from sync_worker import migrations

    pg.drop_database(admin, TEMPLATE)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with psycopg.connect(pg.dsn_for(admin, TEMPLATE), autocommit=True) as conn:
        migrations.migrate(conn)


def _load() -> float:
    return os.getloadavg()[0]


def _commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    status = ["git", "status", "--porcelain", "--", "sync_worker", "sql"]
    dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


def render(runs: dict[str, Run], header: dict[str, Any]) -> str:
    plain, stalled, lock = runs.get("plain"), runs.get("stalled"), runs.get("lock")
    lines = [
        f"Run on {header['date']}, commit {header['commit']}, {header['server']}; "
        f"load average {header['load_before']:.2f} before the run, {header['load_after']:.2f} after "
        f"({os.cpu_count()} cores, shared).",
        "",
    ]
    if header["load_before"] > 1.5:
        lines += [
            "**Preliminary figures**: the load average was above 1.5 before the run (other engineers' "
            "jobs on the same 2 cores); a quiet machine gives higher rates and lower latencies.",
            "",
        ]
    lines += ["| measure | target | measured | met |", "|---|---|---|---|"]

    def row(measure: str, target: str, measured: str, met: bool | None) -> None:
        lines.append(
            f"| {measure} | {target} | {measured} | {'-' if met is None else ('yes' if met else 'no')} |"
        )

    if plain is not None:
        row("callbacks/s, 64 connections", "≥ 1,500", f"{plain.rate:,.0f}", plain.rate >= 1500)
        p99 = float(plain.wrk["p99_us"])
        row("p99 latency, 64 connections", "≤ 100 ms", _ms(p99), p99 <= 100_000)
        row("p50 latency, 64 connections", "-", _ms(float(plain.wrk["p50_us"])), None)
    if stalled is not None:
        threads, sessions = stalled.most("threads"), stalled.most("sessions")
        row("threads with 1,000 stalled clients", "≤ 64", str(threads), threads <= 64)
        row(
            "database sessions with 1,000 stalled clients",
            "≤ pool size (4)",
            str(sessions),
            sessions <= 4,
        )
        row("callbacks/s beside 1,000 stalled clients", "≥ 750", f"{stalled.rate:,.0f}", stalled.rate >= 750)
    rss = max((r.most("rss_kib") for r in runs.values()), default=0) / 1024
    row("RSS (largest of the runs)", "≤ 200 MiB", f"{rss:.0f} MiB", rss <= 200)
    unstored = sum(max(0, int(r.wrk["ok"]) - r.rows) for r in runs.values())
    row("2xx answered but not stored", "0", str(unstored), unstored == 0)
    if lock is not None:
        row(
            "lock run: 503s, all with Retry-After",
            "-",
            f"{lock.wrk['busy']:,} ({lock.wrk['busy_retry_after']:,} with Retry-After)",
            lock.wrk["busy"] == lock.wrk["busy_retry_after"],
        )
        row(
            "lock run: database sessions at most",
            "≤ pool size (4)",
            str(lock.most("sessions")),
            lock.most("sessions") <= 4,
        )
    lines += [
        "",
        "| run | 2xx | 503 | other | callbacks/s | p50 | p99 | rows | callbacks kept | threads | RSS "
        "| sessions | callbacks per transaction | CPU per callback: receiver / Postgres |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.values():
        w = r.wrk
        lines.append(
            f"| {r.name} | {w['ok']:,} | {w['busy']:,} | {w['other'] + w['errors_timeout']:,} "
            f"| {r.rate:,.0f} | {_ms(w['p50_us'])} | {_ms(w['p99_us'])} | {r.rows:,} | {r.callbacks:,} "
            f"| {r.most('threads')} | "
            f"{r.most('rss_kib') / 1024:.0f} MiB | {r.most('sessions')} | {_per_tx(r)} | {_cpu(r)} |"
        )
    if lock is not None and "lock_taken" in lock.extra:
        taken, released = float(lock.extra["lock_taken"]), float(lock.extra["lock_released"])
        before = lock.rate_between(1.0, taken)
        during = lock.rate_between(taken + 0.5, released)
        after = lock.rate_between(released + 1.0, lock.seconds)
        lines += [
            "",
            f"Lock run: `sms_message` locked from {taken:.1f} s to {released:.1f} s. Callbacks stored/s "
            f"(receiver's counter): {_rate(before)} before, {_rate(during)} during, {_rate(after)} from 1 s "
            f"after the release to the end ({_ratio(after, before)} of the rate before). The last callback "
            f"answered 503 was counted by the sample at {_seconds(lock.last_failure())} "
            f"({_seconds(_minus(lock.last_failure(), released))} after the release); none after it.",
        ]
    return "\n".join(lines) + "\n"


def _per_tx(run: Run) -> str:
    value = run.extra.get("callbacks_per_transaction")
    return "-" if value is None else f"{value:.1f} ({run.extra['transactions']:,.0f} transactions)"


def _cpu(run: Run) -> str:
    answered = int(run.wrk["ok"]) + int(run.wrk["busy"]) + int(run.wrk["other"])
    if not answered:
        return "-"
    receiver = 1000 * float(run.extra.get("receiver_cpu_s", 0)) / answered
    postgres = 1000 * float(run.extra.get("postgres_cpu_s", 0)) / answered
    return f"{receiver:.2f} / {postgres:.2f} ms"


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def _minus(a: float | None, b: float) -> float | None:
    return None if a is None else a - b


def _rate(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "?" if a is None or not b else f"{a / b:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=("plain", "stalled", "lock"), help="run only these"
    )
    parser.add_argument("--seconds", type=int, default=15, help="length of each wrk run (default 15)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--stalled", type=int, default=1000)
    parser.add_argument("--tree", type=Path, default=None, help="measure another checkout's worker")
    harness.add_readme_option(parser)
    args = parser.parse_args(argv)
    harness.interruptible()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; make bench-receiver does it)", file=sys.stderr)
        return 2
    wanted = args.only or ["plain", "stalled", "lock"]
    load_before = _load()
    header: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%MZ"),
        "commit": _commit() if args.tree is None else f"tree {args.tree}",
        "load_before": load_before,
    }
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp, pg.server() as admin:
        settings = pg.settings(admin)
        header["server"] = (
            f"PostgreSQL {settings['server_version'].split()[0]} (fsync {settings['fsync']}, "
            f"synchronous_commit {settings['synchronous_commit']})"
        )
        script = Path(tmp) / "callbacks.lua"
        script.write_text(
            _LUA.replace("__USER__", USER).replace("__PASSWORD__", PASSWORD).replace("__ACCOUNT__", ACCOUNT)
        )
        log = Path(tmp) / "receiver.log"
        _template(admin)
        try:
            for name in wanted:
                print(f"run {name}...", file=sys.stderr, flush=True)
                runs[name] = one_run(
                    name,
                    admin,
                    args.tree,
                    script,
                    log,
                    connections=args.connections,
                    seconds=args.seconds,
                    stalled=args.stalled if name == "stalled" else 0,
                    lock_at=5.0 if name == "lock" else None,
                )
                print(json.dumps(runs[name].as_dict()), file=sys.stderr, flush=True)
        finally:
            pg.drop_database(admin, DATABASE)
            pg.drop_database(admin, TEMPLATE)
    header["load_after"] = _load()
    text = render(runs, header)
    print(text)
    results = HERE / "results" / f"receiver-{time.strftime('%Y%m%dT%H%M%S')}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps({"header": header, "runs": [r.as_dict() for r in runs.values()]}, indent=2) + "\n"
    )
    if args.readme:
        harness.write_readme_section(HERE / "README.md", text, README_BEGIN, README_END)
        print("bench/README.md updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
