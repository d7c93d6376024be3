"""``python -m bench.scale``: daemon replicas sharing many accounts (issue 14), one command.

Starts a throwaway embedded Postgres, the simulator in its own process (every account seeded, a
fixed latency per request), and ``--replicas`` real ``sync-worker run`` processes on the same
accounts with short intervals. Halfway through, one replica is killed (SIGKILL: no shutdown, its
claims and locks simply stop). Meanwhile it samples Postgres (transactions/s, locks, sessions) and
the CPU of every process, and trickles new messages into random accounts. At the end the replicas
get SIGTERM and the run is judged from the database (``sync_run``) and the simulator's request log:

* freshness: per account, the longest time without a success after its first one (consecutive
  successes, and the last one to the end), against ``(interval + jitter) x 1.1``;
* API history requests per account per interval, and the shortest gap between two runs of one
  account (an interval or more: nobody ran it twice);
* Postgres load, and where the CPU went.

Prints a Markdown summary and writes ``bench/results/scale-<timestamp>.json``. ``make bench-scale``
runs the default (1,000 accounts, 4 replicas, ~3 minutes); ``--accounts 10000`` and friends scale it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import harness, pg, proc

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Plan:
    accounts: int = 1000
    replicas: int = 4
    concurrency: int = 8
    interval: float = 30.0
    jitter: float = 3.0
    lease: float = 5.0
    duration: float = 180.0
    kill_at: float = 0.5  # share of the duration after which one replica is killed
    latency: float = 0.1
    seed_each: int = 20  # messages queued per account before the start
    trickle: int = 50  # accounts that get a few new messages every few seconds

    @property
    def bound(self) -> float:
        return (self.interval + self.jitter) * 1.1


@dataclasses.dataclass
class Samples:
    t: list[float] = dataclasses.field(default_factory=list)
    xacts: list[int] = dataclasses.field(default_factory=list)
    advisory: list[int] = dataclasses.field(default_factory=list)
    waiting: list[int] = dataclasses.field(default_factory=list)
    sessions: list[int] = dataclasses.field(default_factory=list)
    load: list[float] = dataclasses.field(default_factory=list)
    waited: dict[str, int] = dataclasses.field(default_factory=dict)  # lock kind -> samples seen waiting
    waiters: dict[str, int] = dataclasses.field(default_factory=dict)  # statement -> samples seen waiting

    def take(self, conn: psycopg.Connection[Any], elapsed: float) -> None:
        row = conn.execute(_PG_SAMPLE).fetchone()
        assert row is not None
        self.t.append(elapsed)
        self.xacts.append(int(row[0]))
        self.advisory.append(int(row[1]))
        self.waiting.append(int(row[2]))
        self.sessions.append(int(row[3]))
        for kind in str(row[4] or "").split(", "):
            if kind:
                self.waited[kind] = self.waited.get(kind, 0) + 1
        for query in str(row[5] or "").split(" | "):
            if query:
                self.waiters[query] = self.waiters.get(query, 0) + 1
        self.load.append(os.getloadavg()[0])


_PG_SAMPLE = r"""
SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted),
       (SELECT count(*) FROM pg_locks WHERE NOT granted),
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
       (SELECT string_agg(locktype || ' ' || mode, ', ') FROM pg_locks WHERE NOT granted),
       (SELECT string_agg(left(regexp_replace(query, '\s+', ' ', 'g'), 60), ' | ')
        FROM pg_stat_activity WHERE wait_event_type = 'Lock')
"""


def _replica(env: dict[str, str], log_dir: Path, index: int) -> subprocess.Popen[bytes]:
    with (log_dir / f"replica-{index}.log").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "sync_worker", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=proc.ROOT,
        )


def run(plan: Plan, log: Any = print) -> dict[str, Any]:
    names = [f"scale-{i:05d}" for i in range(plan.accounts)]
    log_dir = Path(tempfile.mkdtemp(prefix="sync-scale-"))
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        dsn = pg.fresh_database(admin, "scale")
        pg_pid = proc.postmaster_pid(admin)
        with proc.SimHost() as sim:
            t_seed = time.perf_counter()
            for i, name in enumerate(names):
                sim.seed(name, plan.seed_each, seed=1000 + i)
            log(f"seeded {plan.accounts} accounts x {plan.seed_each} in {time.perf_counter() - t_seed:.1f} s")
            sim.set_latency(plan.latency)
            env = {
                **os.environ,
                **sim.env,
                "SYNC_DATABASE_URL": dsn,
                "SYNC_ACCOUNTS": ",".join(names),
                "SYNC_INTERVAL_SECONDS": str(plan.interval),
                "SYNC_JITTER_SECONDS": str(plan.jitter),
                "SYNC_CONCURRENCY": str(plan.concurrency),
                "SYNC_CLAIM_LEASE_SECONDS": str(plan.lease),
                "SYNC_LOG_FORMAT": "json",
                "SYNC_LOG_LEVEL": "WARNING",
            }
            replicas = [_replica(env, log_dir, i) for i in range(plan.replicas)]
            cpu: dict[str, float] = {}
            samples = Samples()
            killed: dict[str, Any] = {}
            rng = random.Random(7)
            with psycopg.connect(dsn, autocommit=True) as conn:
                started = _db_now(conn)
                t0 = time.monotonic()
                cpu_before = _cpu(replicas, sim.pid(), pg_pid)
                next_trickle = t0 + 5.0
                while (elapsed := time.monotonic() - t0) < plan.duration:
                    samples.take(conn, elapsed)
                    _merge_cpu(cpu, _cpu(replicas, sim.pid(), pg_pid))
                    if not killed and elapsed >= plan.duration * plan.kill_at:
                        killed = _kill(conn, replicas[0])
                        log(f"t={elapsed:.0f}s killed replica 0 ({killed['held']} claims held)")
                    if time.monotonic() >= next_trickle:
                        for name in rng.sample(names, min(plan.trickle, len(names))):
                            sim.seed(name, rng.randint(1, 20), seed=rng.randint(1, 10**9))
                        next_trickle += 5.0
                    time.sleep(1.0)
                ended = _db_now(conn)
                for replica in replicas[1:]:
                    replica.send_signal(signal.SIGTERM)
                for replica in replicas:
                    replica.wait(timeout=120)
                codes = [r.returncode for r in replicas]
                _merge_cpu(cpu, _cpu(replicas, sim.pid(), pg_pid))
                cpu_spent = {k: round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu.items()}
                result = _judge(conn, plan, started, ended, killed)
            requests = sim.history_by_account()
            result["history_requests_per_account_per_interval"] = _per_interval(
                requests, names, result["window_seconds"], plan
            )
            result["history_requests_total"] = sum(requests.values())
    result.update(
        plan=dataclasses.asdict(plan),
        bound_seconds=round(plan.bound, 1),
        exit_codes=codes,
        cpu_seconds=cpu_spent,
        postgres=_pg_load(samples),
        load_average=round(statistics.mean(samples.load), 2) if samples.load else None,
        cores=os.cpu_count(),
        logs=str(log_dir),
        environment=harness.environment(),
    )
    return result


def _db_now(conn: psycopg.Connection[Any]) -> datetime.datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


_HELD = "SELECT count(*) FROM sync_schedule WHERE split_part(claimed_by, ':', 2) = %s"


def _kill(conn: psycopg.Connection[Any], replica: subprocess.Popen[bytes]) -> dict[str, Any]:
    # Killed while it holds claims (runs in flight), so the takeover after the lease is exercised.
    until = time.monotonic() + 10.0
    while time.monotonic() < until:
        row = conn.execute(_HELD, (str(replica.pid),)).fetchone()
        if row is not None and row[0] > 0:
            break
        time.sleep(0.02)
    replica.kill()
    replica.wait()
    at = _db_now(conn)
    # Its holder names start with host:pid; the claims it held now wait for their lease.
    held = [
        r[0]
        for r in conn.execute(
            "SELECT account_name FROM sync_schedule WHERE split_part(claimed_by, ':', 2) = %s",
            (str(replica.pid),),
        ).fetchall()
    ]
    return {"pid": replica.pid, "at": at, "held": len(held), "accounts": held}


def _cpu(replicas: list[subprocess.Popen[bytes]], sim_pid: int, pg_pid: int | None) -> dict[str, float]:
    out = {"simulator": proc._process_cpu(sim_pid)}
    for i, r in enumerate(replicas):
        if r.poll() is None:
            out[f"replica-{i}"] = proc._process_cpu(r.pid)
    if pg_pid is not None:
        out["postgres"] = proc._process_cpu(pg_pid) + proc._live_children_cpu(pg_pid)
    return out


def _merge_cpu(into: dict[str, float], sample: dict[str, float]) -> None:
    # A killed replica keeps its last reading.
    for k, v in sample.items():
        into[k] = max(into.get(k, 0.0), v)


def _judge(
    conn: psycopg.Connection[Any],
    plan: Plan,
    started: datetime.datetime,
    ended: datetime.datetime,
    killed: dict[str, Any],
) -> dict[str, Any]:
    runs: dict[str, list[tuple[datetime.datetime, datetime.datetime | None, str | None]]] = {}
    for account, start, finish, outcome in conn.execute(
        "SELECT account_name, started_at, finished_at, outcome FROM sync_run"
        " WHERE started_at <= %s ORDER BY started_at",
        (ended,),
    ).fetchall():
        runs.setdefault(account, []).append((start, finish, outcome))
    stale: dict[str, float] = {}
    first_success: list[float] = []
    min_gap: dict[str, float] = {}
    outcomes: dict[str, int] = {}
    for account, rs in runs.items():
        for _, _, outcome in rs:
            # A killed replica's run stays "running" until the account's next run closes it (abandoned).
            label = "unfinished (killed)" if outcome in ("running", "abandoned") else str(outcome)
            outcomes[label] = outcomes.get(label, 0) + 1
        done = [f for _, f, o in rs if o == "succeeded" and f is not None and f <= ended]
        if done:
            first_success.append((done[0] - started).total_seconds())
            points = [*done, ended]
            stale[account] = max((b - a).total_seconds() for a, b in itertools.pairwise(points))
        starts = [s for s, _, _ in rs]
        if len(starts) > 1:
            min_gap[account] = min((b - a).total_seconds() for a, b in itertools.pairwise(starts))
    never = sorted(set(f"scale-{i:05d}" for i in range(plan.accounts)) - set(stale))
    held = set(killed.get("accounts", []))
    over = sorted(a for a, s in stale.items() if s > plan.bound)
    worst = sorted(stale.values())
    window = (ended - started).total_seconds()
    return {
        "window_seconds": round(window, 1),
        "accounts_synced": len(stale),
        "accounts_never_synced": len(never),
        "ramp_seconds": round(max(first_success), 1) if first_success else None,
        "runs": sum(len(r) for r in runs.values()),
        "outcomes": outcomes,
        "staleness_max_seconds": round(worst[-1], 1) if worst else None,
        "staleness_p99_seconds": round(worst[int(len(worst) * 0.99) - 1], 1) if worst else None,
        "staleness_median_seconds": round(statistics.median(worst), 1) if worst else None,
        "accounts_over_bound": len(over),
        "accounts_over_bound_held_by_killed": len([a for a in over if a in held]),
        "staleness_max_not_held_by_killed": _max(v for a, v in stale.items() if a not in held),
        "staleness_max_held_by_killed": _max(v for a, v in stale.items() if a in held),
        "killed_held": len(held),
        "min_gap_between_runs_seconds": round(min(min_gap.values()), 2) if min_gap else None,
        # A run the killed replica left unfinished is started again by the taker: not a second run.
        "gaps_shorter_than_interval": sum(
            1 for a, g in min_gap.items() if g < plan.interval - 0.5 and a not in held
        ),
        "min_gap_not_held_by_killed_seconds": _min(g for a, g in min_gap.items() if a not in held),
        "runs_per_second": round(sum(len(r) for r in runs.values()) / window, 1) if window else None,
    }


def _max(values: Iterable[float]) -> float:
    return round(max(values, default=0.0), 1)


def _min(values: Iterable[float]) -> float | None:
    found = list(values)
    return round(min(found), 2) if found else None


def _per_interval(requests: dict[str, int], names: list[str], window: float, plan: Plan) -> dict[str, float]:
    # Mean period between runs: the interval plus half the jitter on average.
    periods = window / (plan.interval + plan.jitter / 2)
    per = [requests.get(n, 0) / periods for n in names]
    return {"mean": round(statistics.mean(per), 2), "max": round(max(per), 2), "min": round(min(per), 2)}


def _pg_load(s: Samples) -> dict[str, Any]:
    if len(s.t) < 2:
        return {}
    rates = [(b - a) / (tb - ta) for a, b, ta, tb in zip(s.xacts, s.xacts[1:], s.t, s.t[1:], strict=False)]
    return {
        "transactions_per_second_mean": round((s.xacts[-1] - s.xacts[0]) / (s.t[-1] - s.t[0]), 1),
        "transactions_per_second_peak": round(max(rates), 1),
        "advisory_locks_held_max": max(s.advisory),
        "locks_waiting_max": max(s.waiting),
        "sessions_max": max(s.sessions),
        "locks_waited_by_kind": s.waited,
        "statements_seen_waiting": s.waiters,
    }


def render(result: dict[str, Any]) -> str:
    p = result["plan"]
    pgl = result["postgres"]
    per = result["history_requests_per_account_per_interval"]
    r = result
    lines = [
        f"**{p['accounts']:,} accounts, {p['replicas']} replicas x concurrency {p['concurrency']}**, "
        f"interval {p['interval']:.0f} s + jitter {p['jitter']:.0f} s, lease {p['lease']:.0f} s, "
        f"{p['latency'] * 1000:.0f} ms per request, {r['window_seconds']:.0f} s, replica 0 killed at "
        f"{p['kill_at']:.0%} (load average {r['load_average']} on {r['cores']} cores)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| accounts synced / never | {r['accounts_synced']:,} / {r['accounts_never_synced']} |",
        f"| ramp: every account's first success after | {r['ramp_seconds']} s |",
        f"| runs ({r['runs_per_second']}/s); outcomes | {r['runs']:,}; {r['outcomes']} |",
        f"| longest time without a success (bound {r['bound_seconds']} s) | "
        f"max {r['staleness_max_seconds']} s, p99 {r['staleness_p99_seconds']} s, "
        f"median {r['staleness_median_seconds']} s |",
        f"| accounts over the bound (of them held by the killed replica: {r['killed_held']}) | "
        f"{r['accounts_over_bound']} ({r['accounts_over_bound_held_by_killed']}) |",
        f"| longest without a success: accounts the killed replica held / all others | "
        f"{r['staleness_max_held_by_killed']} s / {r['staleness_max_not_held_by_killed']} s |",
        f"| history requests per account per interval | "
        f"mean {per['mean']}, min {per['min']}, max {per['max']} |",
        f"| shortest gap between two runs of one account: all others / any | "
        f"{r['min_gap_not_held_by_killed_seconds']} s / {r['min_gap_between_runs_seconds']} s "
        f"({r['gaps_shorter_than_interval']} other accounts under the interval) |",
        f"| Postgres transactions/s (mean, peak) | {pgl.get('transactions_per_second_mean')}, "
        f"{pgl.get('transactions_per_second_peak')} |",
        f"| advisory locks held (max); locks waited on (max); sessions (max) | "
        f"{pgl.get('advisory_locks_held_max')}; {pgl.get('locks_waiting_max')} "
        f"({pgl.get('locks_waited_by_kind')}); {pgl.get('sessions_max')} |",
        f"| CPU seconds | {r['cpu_seconds']} |",
        f"| replica exit codes (the killed one: -9) | {r['exit_codes']} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    defaults = Plan()
    for field in dataclasses.fields(Plan):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)), default=None
        )
    args = parser.parse_args(argv)
    plan = dataclasses.replace(
        defaults, **{k: v for k, v in vars(args).items() if v is not None and k in Plan.__dataclass_fields__}
    )
    result = run(plan, log=lambda m: print(m, file=sys.stderr, flush=True))
    stamp = harness.now_utc().replace(" ", "T").replace(":", "")
    out = HERE / "results" / f"scale-{stamp}-{plan.accounts}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    print(f"\n(raw results: {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
