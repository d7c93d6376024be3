"""``python -m bench.compare``: issue 14's figures, a baseline tree against the working tree, in one run.

Every side is timed as a whole process, from its start to its exit:

* the worker of each tree is ``python -m sync_worker once`` run from that tree (``bench.in_tree``:
  ``PYTHONPATH`` and working directory at the tree, the child checks it imported that tree), against
  the simulator (its own process, ``bench.simhost``) and a fresh database of the embedded PostgreSQL 18
  cloned from a template that the tree's own ``python -m sync_worker migrate`` built;
* dlt 1.31.0 is ``python -m bench.peer_dlt`` (default loader, and CSV loader), draining the same
  backlog into a fresh empty database.

Wall time is the child's, start to exit (imports, login and connection set-up included; both trees
byte-compiled first, as an installed package is). The worker's
CPU is the child's own user + system time (``wait4``); Postgres's and the simulator's come from psutil
around the child (``bench.proc.CpuMeter``). Before and after alternate within each repetition (who goes
first alternates too), with the same traffic for both.

The baseline's ``sync_worker/`` and ``sql/`` are exported with ``git archive`` (default 9cc31ed, the
last commit of the v1 history layout, before issue 14's work). Writes ``bench/results/compare-*.json``
(gitignored) and, for a full run of every step, the table between this benchmark's markers in
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import functools
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from bench import harness, history_store, in_tree, pg, proc, scenario_context, scenarios, standalone_scenarios

HERE: Final = Path(__file__).resolve().parent
BASELINE: Final = "9cc31ed"
SIDES: Final = ("before", "after")
README_BEGIN: Final = "<!-- bench:compare:begin -->"
README_END: Final = "<!-- bench:compare:end -->"
# (seconds, messages received, CPU seconds by process): one drain, as scenarios._cpu_figures takes it.
Sample = tuple[float, int, dict[str, float]]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    sides: dict[str, scenario_context.Context]
    # dlt's figures: measured once per repetition, compared with both sides.
    peer: harness.Results
    sizes: scenario_context.Sizes
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    load_by_step: dict[str, float] = dataclasses.field(default_factory=dict)

    def order(self, rep: int) -> list[tuple[str, scenario_context.Context]]:
        """Both sides, the first one alternating per repetition (drift on a shared machine hits both)."""
        pairs = list(self.sides.items())
        return pairs if rep % 2 == 0 else pairs[::-1]

    @property
    def any(self) -> scenario_context.Context:
        return next(iter(self.sides.values()))


def _create_empty(admin_dsn: str, name: str) -> str:
    pg.drop_database(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return pg.dsn_for(admin_dsn, name)


def build_template(admin_dsn: str, tree: Path, name: str) -> None:
    """The tree's own ``python -m sync_worker migrate`` into an empty database, cloned for every run."""
    dsn = _create_empty(admin_dsn, name)
    env = in_tree.env_for(tree)
    env["SYNC_DATABASE_URL"] = dsn
    done = proc.run_measured(in_tree.argv(tree, "migrate"), env=env, cwd=tree, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"migrate in {tree} exited {done.returncode}: {done.stderr[-2000:]}")


def drain(
    ctx: scenario_context.Context, accounts: list[str], each: int, concurrency: int, seed: int
) -> Sample:
    """Seed, then one ``once`` process of ctx's tree; checks that every message got stored."""
    for i, account in enumerate(accounts):
        ctx.sim.seed(account, each, seed=seed + i)
    name, dsn = ctx.fresh_db("cmp")
    pg.checkpoint(dsn)
    env = in_tree.env_for(ctx.tree)
    env.update(ctx.worker_env(dsn, accounts, concurrency))
    with proc.CpuMeter(ctx.sim.pid(), ctx.pg_pid) as cpu:
        run = proc.run_measured(in_tree.argv(ctx.tree, "once"), env=env, cwd=ctx.tree, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"once in {ctx.tree} exited {run.returncode}: {run.stderr[-2000:]}")
    summary = run.last_json()
    expected = each * len(accounts)
    if summary.get("received") != expected or summary.get("failed"):
        raise RuntimeError(f"expected {expected} received and no failure; summary {summary}")
    left = sum(ctx.sim.queued(account) for account in accounts)
    if left:
        raise RuntimeError(f"{left} messages still queued at the simulator after the pass")
    stored = pg.count_rows(dsn)
    if stored != summary.get("inserted"):
        raise RuntimeError(f"{stored} rows in sms_history, the pass reported {summary.get('inserted')}")
    pg.drop_database(ctx.admin_dsn, name)
    # The bench process's own CPU (CpuMeter's "worker") is not the worker's: the child's is.
    spent = {"worker": run.cpu_seconds, "simulator": cpu.spent["simulator"]}
    if "postgres" in cpu.spent:
        spent["postgres"] = cpu.spent["postgres"]
    return run.wall_seconds, expected, spent


def _drains(
    run: Run, prefix: str, *, accounts: int, each: int, concurrency: int, seed: int
) -> dict[str, list[Sample]]:
    """``reps`` drains per side, alternating; the same seeds for both sides in a repetition (same traffic)."""
    samples: dict[str, list[Sample]] = {side: [] for side in run.sides}
    for rep in range(run.sizes.reps):
        for side, ctx in run.order(rep):
            names = [ctx.name(prefix) for _ in range(accounts)]
            sample = drain(ctx, names, each, concurrency, seed + 100 * rep)
            samples[side].append(sample)
            seconds, received, spent = sample
            _log(
                f"  {prefix} {side} rep {rep + 1}: {received:,} in {seconds:.2f} s = "
                f"{received / seconds:,.0f} rows/s, worker CPU {spent['worker']:.2f} s"
            )
    run.raw[prefix] = samples
    return samples


def step_startup(run: Run) -> None:
    """0. A pass with nothing to fetch: what a worker process costs before and around its blocks."""
    samples = _drains(run, "idle", accounts=1, each=0, concurrency=1, seed=100)
    label = "0. `once` with one account and nothing to fetch (start, login, one request, exit)"
    for side, ctx in run.sides.items():
        walls = tuple(s for s, _, _ in samples[side])
        cpus = tuple(spent["worker"] * 1000 for _, _, spent in samples[side])
        ctx.results.add(harness.Figure("startup_wall", f"{label}: wall", "s", walls, False))
        ctx.results.add(harness.Figure("startup_cpu", f"{label}: worker CPU", "ms", cpus, False))


def _zero_latency(run: Run, key: str, prefix: str, samples: dict[str, list[Sample]], *, short: str) -> None:
    sz = run.sizes
    each = sz.one_account if prefix == "one" else sz.many_each
    label = f"{short} x {each:,}, zero latency" + (
        f", concurrency {sz.many_concurrency}" if prefix == "many" else ""
    )
    for side, ctx in run.sides.items():
        rates = tuple(n / s for s, n, _ in samples[side])
        ctx.results.add(harness.Figure(key, label, "rows/s", rates, note="whole process, start to exit"))
        scenarios._cpu_figures(ctx, prefix, short, samples[side])
        fixed = ctx.results.get("startup_cpu")
        if fixed is not None:
            net = tuple(
                (spent["worker"] * 1000 - fixed.median) / (n / scenario_context.BLOCK)
                for _, n, spent in samples[side]
            )
            ctx.results.add(
                harness.Figure(
                    f"{prefix}_cpu_worker_net",
                    f"{short}: worker CPU per block, net of step 0's fixed cost",
                    "ms",
                    net,
                    False,
                    note="(worker CPU - median of step 0) / blocks",
                )
            )


def step_one(run: Run) -> None:
    sz = run.sizes
    samples = _drains(run, "one", accounts=1, each=sz.one_account, concurrency=1, seed=200)
    _zero_latency(run, "one_account", "one", samples, short="2. one account")


def step_many(run: Run) -> None:
    sz = run.sizes
    samples = _drains(
        run, "many", accounts=sz.many_accounts, each=sz.many_each, concurrency=sz.many_concurrency, seed=300
    )
    _zero_latency(run, "many_accounts", "many", samples, short=f"3. {sz.many_accounts} accounts")


def _latency_bound(run: Run, prefix: str, *, accounts: int, each: int, concurrency: int) -> None:
    sz = run.sizes
    ideal, bare, how = scenarios.latency_ideal(accounts, each, concurrency, sz.latency)
    cores = os.cpu_count() or 1
    run.any.sim.set_latency(sz.latency)
    try:
        samples = _drains(run, prefix, accounts=accounts, each=each, concurrency=concurrency, seed=400)
    finally:
        run.any.sim.set_latency(0.0)
    label = (
        f"{'4' if prefix == 'latency' else '4b'}. {accounts} accounts x {each:,} at "
        f"{sz.latency * 1000:.0f} ms, concurrency {concurrency}"
    )
    for side, ctx in run.sides.items():
        walls = tuple(s for s, _, _ in samples[side])
        r = ctx.results
        r.add(harness.Figure(f"{prefix}_wall", f"{label}: wall", "s", walls, False, note="whole process"))
        r.add(
            harness.Figure(
                f"{prefix}_ratio",
                f"{label}: wall / ideal (login counted)",
                "x",
                tuple(w / ideal for w in walls),
                False,
                how,
            )
        )
        r.add(
            harness.Figure(
                f"{prefix}_ratio_blocks",
                f"{label}: wall / blocks-only ideal (the ratio before the login was counted)",
                "x",
                tuple(w / bare for w in walls),
                False,
                note=f"blocks-only ideal {bare:.2f} s",
            )
        )
        fixed = r.get("startup_wall")
        if fixed is not None:
            # The ideal counts requests only; a whole process also starts, imports and connects.
            r.add(
                harness.Figure(
                    f"{prefix}_ratio_net",
                    f"{label}: (wall - step 0's wall) / ideal",
                    "x",
                    tuple((w - fixed.median) / ideal for w in walls),
                    False,
                    note="the process's fixed cost (measured at zero latency) left out",
                )
            )
        floors = tuple(sum(spent.values()) / cores / ideal for _, _, spent in samples[side])
        r.add(
            harness.Figure(
                f"{prefix}_cpu_floor",
                f"{label}: CPU floor / ideal (CPU seconds of worker + simulator + postgres / {cores} cores)",
                "x",
                floors,
                False,
                note="no scheduling on these cores can beat this ratio",
            )
        )
        scenarios._cpu_figures(ctx, prefix, label, samples[side])


def step_latency(run: Run) -> None:
    sz = run.sizes
    _latency_bound(
        run, "latency", accounts=sz.latency_accounts, each=sz.latency_each, concurrency=sz.latency_concurrency
    )


def step_latency_wide(run: Run) -> None:
    sz = run.sizes
    _latency_bound(run, "wide", accounts=sz.wide_accounts, each=sz.wide_each, concurrency=sz.wide_concurrency)


def step_memory(run: Run) -> None:
    # standalone_scenarios.memory runs its repetitions side by side (peak RSS is per process), one size
    # at a time.
    for side, ctx in run.order(0):
        _log(f"  memory, {side} ...")
        standalone_scenarios.memory(ctx)


def peer_drain(ctx: scenario_context.Context, n: int, seed: int, csv: bool) -> dict[str, Any]:
    """``python -m bench.peer_dlt`` draining ``n`` messages into a fresh empty database, timed whole."""
    account = ctx.name("peer")
    ctx.sim.seed(account, n, seed=seed)
    name = ctx.name("peer").replace("-", "_")
    dsn = _create_empty(ctx.admin_dsn, name)
    env = {**os.environ, **ctx.sim.env}
    argv = [sys.executable, "-m", "bench.peer_dlt", "--account", account, "--database-url", dsn]
    with proc.CpuMeter(ctx.sim.pid(), ctx.pg_pid) as cpu:
        done = proc.run_measured([*argv, *(["--csv"] if csv else [])], env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"dlt peer exited {done.returncode}: {done.stderr[-2000:]}")
    if ctx.sim.queued(account) != 0:
        raise RuntimeError(f"dlt left {ctx.sim.queued(account)} messages queued")
    pg.drop_database(ctx.admin_dsn, name)
    return {
        **done.last_json(),
        "wall": done.wall_seconds,
        "cpu": done.cpu_seconds,
        "rss_mib": done.peak_rss_mib,
        "postgres_cpu": cpu.spent.get("postgres", 0.0),
    }


def step_peer(run: Run) -> None:
    sz = run.sizes
    n = sz.one_account  # the same backlog (and seeds) as step 2's one account
    variants = (("peer", "default loader (insert_values)", False), ("peer_csv", "CSV loader (COPY)", True))
    outs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in variants}
    for rep in range(sz.reps):
        for key, label, csv in variants if rep % 2 == 0 else variants[::-1]:
            out = peer_drain(run.any, n, 200 + 100 * rep, csv)
            outs[key].append(out)
            _log(f"  dlt {label} rep {rep + 1}: {n:,} in {out['wall']:.2f} s = {n / out['wall']:,.0f} rows/s")
    dlt = harness._version("dlt")
    for key, label, _ in variants:
        o = outs[key]
        blocks = n / scenario_context.BLOCK
        figures = (
            (key, f"7. dlt {dlt}, {label}, backlog {n:,}", "rows/s", [n / x["wall"] for x in o], True),
            (
                f"{key}_cpu",
                f"7. dlt {label}: its process's CPU per block",
                "ms",
                [x["cpu"] / blocks * 1000 for x in o],
                False,
            ),
            (
                f"{key}_pg_cpu",
                f"7. dlt {label}: Postgres CPU per block",
                "ms",
                [x["postgres_cpu"] / blocks * 1000 for x in o],
                False,
            ),
            (f"{key}_rss", f"7. dlt {label}: peak RSS", "MiB", [x["rss_mib"] for x in o], False),
        )
        for fkey, flabel, unit, values, higher in figures:
            note = "whole process, start to exit" + (
                "; dlt extracts everything before loading: it acknowledges blocks before they are durable"
                if fkey == key
                else ""
            )
            run.peer.add(harness.Figure(fkey, flabel, unit, tuple(values), higher, note=note))
    run.raw["peer"] = outs


STEPS: Final[dict[str, Callable[[Run], None]]] = {
    "startup": step_startup,
    "one_account": step_one,
    "many_accounts": step_many,
    "latency": step_latency,
    "latency_wide": step_latency_wide,
    "memory": step_memory,
    "peer": step_peer,
}


# --- issue 14's targets ---------------------------------------------------------------------------


def _m(results: harness.Results, key: str) -> float | None:
    fig = results.get(key)
    return None if fig is None else fig.median


def targets(
    side: harness.Results, peer: harness.Results, sizes: scenario_context.Sizes
) -> list[tuple[str, str, str, bool | None]]:
    """(measure, target, result, met) for one side, issue 14's targets (at this run's sizes)."""
    out: list[tuple[str, str, str, bool | None]] = []
    cpu, net = _m(side, "one_cpu_worker"), _m(side, "one_cpu_worker_net")
    if cpu is not None:
        text = f"{cpu:.2f} ms" + ("" if net is None else f" ({net:.2f} net of step 0)")
        out.append(("worker CPU per block, one account, whole process", "<= 1.2 ms", text, cpu <= 1.2))
    one, dlt, csv = _m(side, "one_account"), _m(peer, "peer"), _m(peer, "peer_csv")
    if one is not None and dlt and csv:
        out.append(
            (
                "one account vs dlt (default / CSV loader)",
                ">= 2.5 x / >= 1.5 x",
                f"{one / dlt:.2f} x / {one / csv:.2f} x",
                one / dlt >= 2.5 and one / csv >= 1.5,
            )
        )
    many = _m(side, "many_accounts")
    if many is not None:
        out.append(
            (f"{sizes.many_accounts} accounts", ">= 30,000 rows/s", f"{many:,.0f} rows/s", many >= 30_000)
        )
    small, large = _m(side, "memory_small"), _m(side, "memory_large")
    if small is not None and large is not None:
        out.append(
            (
                f"peak RSS, {sizes.memory_small:,} vs {sizes.memory_large:,} backlog",
                "<= 80 MiB, flat (within 10%)",
                f"{small:.1f} / {large:.1f} MiB",
                max(small, large) <= 80 and large <= 1.1 * small,
            )
        )
    for key, name, limit in (
        ("latency_ratio", "4. latency-bound", 1.05),
        ("wide_ratio", f"4b. {sizes.wide_accounts} accounts", 1.1),
    ):
        ratio = _m(side, key)
        if ratio is not None:
            floor, net = _m(side, key.replace("ratio", "cpu_floor")), _m(side, f"{key}_net")
            note = "" if net is None else f"; {net:.3f} x net of step 0"
            note += "" if floor is None else f"; CPU floor {floor:.2f} x"
            out.append((name, f"<= {limit} x ideal", f"{ratio:.3f} x{note}", ratio <= limit))
    return out


# --- the table --------------------------------------------------------------------------------------


def _cell(fig: harness.Figure | None) -> str:
    if fig is None:
        return ""
    low, high = harness.fmt_value(fig.low, fig.unit), harness.fmt_value(fig.high, fig.unit)
    return f"{harness.fmt_value(fig.median, fig.unit)} {fig.unit} ({low}..{high})"


def render(run: Run, env: dict[str, Any], notes: list[str], command: str) -> str:
    before, after = (run.sides[s].results for s in SIDES)
    lines = [
        f"Results of a {'quick (development)' if after.quick else 'full'} run started {after.started_at} "
        f"(`{command}`).",
        "",
        f"- Machine: {env.get('host_cpu')} x {env.get('cpus')}, RAM {env.get('mem_total_mib')} MiB, "
        f"{env.get('os')}, Python {env.get('python')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
    ]
    for key in ("sides", "postgres_settings", "workload"):
        value = env.get(key)
        if isinstance(value, dict):
            lines.append(
                f"- {key.replace('_', ' ').capitalize()}: " + ", ".join(f"{k}={v}" for k, v in value.items())
            )
    lines += ["", "| issue 14 target | target | before | after | met (after) |", "|---|---|---|---|---|"]
    was = {name: result for name, _, result, _ in targets(before, run.peer, run.sizes)}
    for name, target, result, met in targets(after, run.peer, run.sizes):
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {target} | {was.get(name, '')} | {result} | {verdict} |")
    lines += [
        "",
        "| figure (median, min..max of the repetitions) | before | after | after / before | note |",
        "|---|---|---|---|---|",
    ]
    for key, fig in after.figures.items():
        old = before.get(key)
        ratio = "" if old is None or old.median == 0 else f"{fig.median / old.median:.2f}"
        lines.append(f"| {fig.label} | {_cell(old)} | {_cell(fig)} | {ratio} | {fig.note} |")
    for key, fig in before.figures.items():
        if key not in after.figures:
            lines.append(f"| {fig.label} | {_cell(fig)} | | | {fig.note} |")
    if run.peer.figures:
        lines += [
            "",
            "| dlt, same run (compared with both sides) | median (min..max) | note |",
            "|---|---|---|",
        ]
        lines.extend(f"| {fig.label} | {_cell(fig)} | {fig.note} |" for fig in run.peer.figures.values())
    if run.skipped:
        lines += ["", "**Not measured in this run**", ""] + [f"- {s}" for s in run.skipped]
    lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --- running it -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--baseline", default=BASELINE, help="the 'before' commit (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for development (~3 min)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3)")
    parser.add_argument(
        "--only", action="append", choices=list(STEPS), help="run only these steps (repeatable)"
    )
    harness.add_readme_option(parser)
    return parser


def measure(
    baseline: str, sizes: scenario_context.Sizes, steps: Sequence[str], results: Callable[[], harness.Results]
) -> Run:
    """Export the baseline, start a server and the simulator, build both templates, run ``steps``."""
    env = results().environment
    serial = itertools.count(1)
    with tempfile.TemporaryDirectory(prefix="compare-baseline-") as tmp, pg.server(None) as admin_dsn:
        before, full = history_store.export_baseline(baseline, Path(tmp))
        trees = {"before": before, "after": in_tree.ROOT}
        for tree in trees.values():
            # As installed, by pip: with its bytecode compiled. These are source trees and the
            # environment may set PYTHONDONTWRITEBYTECODE, and then every child compiled every module
            # it imported (60-175 ms of step 0's CPU on the 2-core VM).
            compileall.compile_dir(tree / "sync_worker", quiet=1)
        env["sides"] = {
            "before": f"{full[:7]} (git archive of sync_worker/ and sql/)",
            "after": history_store.working_tree(),
        }
        env["postgres_settings"] = pg.settings(admin_dsn)
        env["workload"] = {
            "block_size": scenario_context.BLOCK,
            "repetitions": sizes.reps,
            "server": "embedded PostgreSQL, one throwaway server for the run (fsync on)",
            "simulator": "bench.simhost in its own process over loopback HTTP",
            "worker_logging": "JSON at INFO to the child's stderr (a file)",
        }
        with proc.SimHost() as sim:
            sides: dict[str, scenario_context.Context] = {}
            for side in SIDES:
                template = f"cmp_template_{side}"
                build_template(admin_dsn, trees[side], template)
                sides[side] = scenario_context.Context(
                    admin_dsn=admin_dsn,
                    sim=sim,
                    sizes=sizes,
                    results=results(),
                    log=_log,
                    pg_pid=proc.postmaster_pid(admin_dsn),
                    tree=trees[side],
                    template=template,
                    # One sequence for both sides: no two runs share an account or a database name.
                    _serial=serial,
                )
            run = Run(sides=sides, peer=results(), sizes=sizes)
            harness.run_steps(
                [(s, functools.partial(STEPS[s], run)) for s in steps], run.skipped, run.load_by_step, _log
            )
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = scenario_context.QUICK if args.quick else scenario_context.FULL
    if args.reps is not None:
        sizes = dataclasses.replace(sizes, reps=max(1, args.reps))
    steps = [s for s in STEPS if not args.only or s in args.only]
    write_readme = args.readme if args.readme is not None else (not args.quick and not args.only)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.compare", *given])
    harness.interruptible()

    started = time.perf_counter()
    stamp = harness.now_utc()
    env = harness.environment()
    run = measure(
        args.baseline,
        sizes,
        steps,
        lambda: harness.Results(started_at=stamp, quick=args.quick, environment=env),
    )
    notes = [
        "1-minute load average after each step (2 CPUs shared with other work; CPU per block is fair "
        "under load, wall times are not): " + ", ".join(f"{k} {v}" for k, v in run.load_by_step.items()),
        f"whole run took {time.perf_counter() - started:.0f} s",
    ]
    text = render(run, env, notes, command)
    payload = {
        "started_at": stamp,
        "sizes": dataclasses.asdict(sizes),
        "environment": env,
        "load_by_step": run.load_by_step,
        "sides": {side: ctx.results.as_dict() for side, ctx in run.sides.items()},
        "peer": run.peer.as_dict(),
        "raw": run.raw,
    }
    path = harness.results_path("compare-", stamp, args.quick)
    harness.publish(text, payload, path, _log, (README_BEGIN, README_END) if write_readme else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
