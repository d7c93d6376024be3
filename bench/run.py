"""``python -m bench.run [--quick]``: every measurement of issue 6 in one run.

Prints the machine / versions / settings header and the results table, writes
``bench/results/<timestamp>.json`` (gitignored) and, for a full run (or with
``--readme``), the table between the markers in ``bench/README.md``.
These are benchmarks, not tests: nothing here fails CI on a missed target.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import harness, pg, proc, scenario_context, scenarios, standalone_scenarios, substitute

HERE = Path(__file__).resolve().parent
# Outside the repository: the server's files survive between runs so the big
# table of scenario 6 is loaded once ($SYNC_BENCH_PGDATA overrides).
DEFAULT_PGDATA = "/var/tmp/thingspace-sms-sync-bench/pgdata"
ORDER: tuple[tuple[str, Callable[[scenario_context.Context], None]], ...] = (
    ("limits", scenarios.limits),
    ("one_account", scenarios.one_account),
    ("many_accounts", scenarios.many_accounts),
    ("latency", scenarios.latency),
    ("latency_wide", scenarios.latency_wide),
    ("memory", standalone_scenarios.memory),
    ("growth", standalone_scenarios.growth),
    ("peer", standalone_scenarios.peer),
    ("profile", scenarios.profile_one_account),
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verdicts(results: harness.Results, sizes: scenario_context.Sizes) -> list[harness.Verdict]:
    f = results.get
    out: list[harness.Verdict] = []

    def ratio(a: str, b: str) -> float | None:
        fa, fb = f(a), f(b)
        return None if fa is None or fb is None or fb.median == 0 else fa.median / fb.median

    def _vs_peer(key: str) -> str:
        r, r_csv = ratio(key, "peer"), ratio(key, "peer_csv")
        text = "" if r is None else f"; {r:.2f} x dlt"
        return text + ("" if r_csv is None else f" ({r_csv:.2f} x its CSV loader)")

    def _busy(prefix: str) -> str:
        busy = f(f"{prefix}_busy")
        if busy is None:
            return ""
        parts = [f(f"{prefix}_cpu_{p}") for p in ("worker", "simulator", "postgres")]
        cpu = ", ".join(f"{p.key.rsplit('_', 1)[1]} {p.median:.1f}" for p in parts if p)
        return f"; CPU ms per block: {cpu}; cores busy {busy.median:.0f}%"

    ceiling = f("ceiling")
    if ceiling:
        parts = [f(k) for k in ("fetch_ms", "build_ms", "commit_ms")]
        text = " + ".join(f"{p.key[:-3]} {p.median:.2f} ms" for p in parts if p)
        out.append(
            harness.Verdict(
                "1. limits",
                "(the ceiling all others are compared with)",
                f"{text} per block -> {ceiling.median:,.0f} rows/s",
                None,
            )
        )
    r2 = ratio("one_account", "ceiling")
    one = f("one_account")
    out.append(
        harness.Verdict(
            "2. one account",
            ">= 0.85 x ceiling",
            "n/a"
            if r2 is None or one is None
            else f"{one.median:,.0f} rows/s = {r2:.2f} x ceiling" + _vs_peer("one_account") + _busy("one"),
            None if r2 is None else r2 >= 0.85,
        )
    )
    many = f("many_accounts")
    out.append(
        harness.Verdict(
            "3. many accounts",
            ">= 40,000 rows/s (or show the bottleneck)",
            "n/a"
            if many is None
            else f"{many.median:,.0f} rows/s at concurrency {sizes.many_concurrency}"
            + (
                ""
                if ratio("many_accounts", "ceiling") is None
                else f" ({ratio('many_accounts', 'ceiling'):.2f} x single-account ceiling)"
            )
            + _vs_peer("many_accounts")
            + _busy("many"),
            None if many is None else many.median >= 40_000,
        )
    )
    wall = f("latency_wall")
    ideal = results.environment.get("workload", {}).get("latency_ideal_s")
    over = f("latency_overhead")
    if wall and ideal and over:
        within = wall.median / ideal
        share = over.median / (sizes.latency * 1000) * 100
        out.append(
            harness.Verdict(
                "4. latency",
                "wall <= 1.05 x ideal (issue 14); worker time per block << 5% of latency",
                f"{wall.median:.2f} s = {within:.3f} x ideal {ideal:.2f} s; {over.median:.2f} ms/block "
                f"= {share:.1f}% of {sizes.latency * 1000:.0f} ms",
                within <= 1.05 and share < 5,
            )
        )
    else:
        out.append(harness.Verdict("4. latency", "wall <= 1.10 x ideal", "n/a", None))
    wide, floor = f("wide_ratio"), f("wide_cpu_floor")
    out.append(
        harness.Verdict(
            "4b. latency, many accounts",
            "wall <= 1.10 x ideal",
            "n/a"
            if wide is None or floor is None
            else f"{wide.median:.2f} x ideal; the CPU alone is {floor.median:.2f} x ideal on this machine"
            + _busy("wide"),
            None if wide is None else wide.median <= 1.10,
        )
    )
    small, large = f("memory_small"), f("memory_large")
    if small and large:
        growth = large.median / small.median
        out.append(
            harness.Verdict(
                "5. memory",
                "<= 80 MiB, large within 10% of small",
                f"{small.median:.1f} MiB ({sizes.memory_small:,}) vs {large.median:.1f} MiB "
                f"({sizes.memory_large:,}) = {growth:.3f} x",
                max(small.median, large.median) <= 80 and growth <= 1.10,
            )
        )
    else:
        out.append(harness.Verdict("5. memory", "<= 80 MiB, within 10%", "n/a", None))
    r6 = ratio("growth_big", "growth_empty")
    out.append(
        harness.Verdict(
            "6. table growth",
            "big-table block write within 20% of empty",
            "n/a"
            if r6 is None
            else f"{f('growth_big').median:.2f} ms vs {f('growth_empty').median:.2f} ms "  # type: ignore[union-attr]
            f"= {r6:.2f} x",
            None if r6 is None else r6 <= 1.20,
        )
    )
    r7, r7_csv = ratio("one_account", "peer"), ratio("one_account", "peer_csv")
    peer, peer_csv = f("peer"), f("peer_csv")
    out.append(
        harness.Verdict(
            "7. dlt peer",
            "one account >= 2.5 x dlt's default loader and >= 1.5 x its CSV loader (issue 14)",
            "n/a"
            if r7 is None or peer is None or r7_csv is None or peer_csv is None
            else f"dlt {peer.median:,.0f} rows/s (CSV loader {peer_csv.median:,.0f}); the worker is "
            f"{r7:.2f} x dlt and {r7_csv:.2f} x its CSV loader",
            None if r7 is None or r7_csv is None else r7 >= 2.5 and r7_csv >= 1.5,
        )
    )
    cpu = f("one_cpu_worker")
    out.append(
        harness.Verdict(
            "2b. worker CPU",
            "<= 1.2 ms per block of 100, one account (issue 14)",
            "n/a" if cpu is None else f"{cpu.median:.2f} ms per block",
            None if cpu is None else cpu.median <= 1.2,
        )
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development (~2 min)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[n for n, _ in ORDER],
        help="run only these measurements (repeatable)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per figure (min 3 for the README)"
    )
    harness.add_readme_option(parser)
    parser.add_argument(
        "--fresh-server",
        action="store_true",
        help="a throwaway server (the 10M-row table is then loaded again, several minutes)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the pyinstrument pass")
    args = parser.parse_args(argv)

    sizes = scenario_context.QUICK if args.quick else scenario_context.FULL
    if args.reps is not None:
        sizes = dataclasses.replace(sizes, reps=max(1, args.reps))
    selected = [(n, fn) for n, fn in ORDER if (not args.only or n in args.only)]
    if args.no_profile:
        selected = [(n, fn) for n, fn in selected if n != "profile"]
    write_readme = args.readme if args.readme is not None else (not args.quick and not args.only)

    harness.interruptible()
    started = time.perf_counter()
    results = harness.Results(
        started_at=harness.now_utc(), quick=args.quick, environment=harness.environment()
    )
    results.environment["workload"] = {
        "block_size": scenario_context.BLOCK,
        "repetitions": sizes.reps,
        "simulator": "sync_worker.simulator in its own process over loopback HTTP",
        "worker_logging": "JSON at INFO to a null sink (formatting cost included)",
    }
    data_dir = None if args.fresh_server else Path(os.environ.get("SYNC_BENCH_PGDATA", DEFAULT_PGDATA))
    with pg.server(data_dir) as admin_dsn:
        results.environment["postgres_settings"] = pg.settings(admin_dsn)
        pg.ensure_template(admin_dsn)
        substitute.quiet_production_logging()
        with proc.SimHost() as sim:
            ctx = scenario_context.Context(
                admin_dsn=admin_dsn,
                sim=sim,
                sizes=sizes,
                results=results,
                log=_log,
                profile=not args.no_profile,
                pg_pid=proc.postmaster_pid(admin_dsn),
            )
            harness.run_steps(
                [(name, functools.partial(fn, ctx)) for name, fn in selected],
                results.skipped,
                results.load_by_step,
                _log,
            )
    results.verdicts = verdicts(results, sizes)
    results.notes.append(
        "1-minute load average after each step (2 CPUs; other work on the machine inflates every figure): "
        + ", ".join(f"{k} {v}" for k, v in results.load_by_step.items())
    )
    total = time.perf_counter() - started
    results.notes.append(f"whole run took {total:.0f} s")
    stamp = results.started_at.replace(" ", "T").replace(":", "")
    harness.write_json(HERE / "results" / f"{stamp}{'-quick' if args.quick else ''}.json", results)
    harness.print_table(results)
    if write_readme:
        harness.write_readme_section(HERE / "README.md", harness.render_markdown(results))
        _log("bench/README.md updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
