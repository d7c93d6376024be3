"""``python -m bench.history_store``: history store v2 (issue 13) before and after, in one run.

Before is the v1 layout at ``--baseline`` (default 9cc31ed: ``sms_history`` + ``sms_history_device``),
exported with ``git archive`` into a temporary directory; after is this working tree. Each
measurement runs ``bench.history_measure`` in a child process whose ``PYTHONPATH`` and working
directory point at the tree under test (the child checks that ``sync_worker`` and
``queries.sql_root()`` really come from there), on an embedded server of its own, so the same
measuring code sees each layout and Postgres CPU is that variant's alone:

1. bytes per stored message: the simulator's default traffic (``--messages``, over ``--accounts``)
   through ``store.commit_block`` in blocks of 100, then VACUUM ANALYZE; the total relation size
   (heap + TOAST + every index) of every history table and partition divided by rows stored;
2. Postgres CPU per block: ``--blocks`` prebuilt blocks committed by ``store.commit_block`` into an
   empty database, psutil CPU of the postmaster and all its children (``bench.proc.CpuMeter``),
   ``--reps`` times, before and after alternating;
3. (after only) per-block commit time with ``--growth-rows`` already stored vs an empty database;
   the big database is built once with SQL and kept on a persistent server
   (``$SYNC_BENCH_HISTORY_PGDATA``, default /var/tmp/thingspace-sms-sync-bench/history-store-pgdata).

Prints the table, writes ``bench/results/history-store-<timestamp>.json`` (gitignored) and, for a
full run, the table between this benchmark's markers in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bench import harness, in_tree

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
BASELINE: Final = "9cc31ed"
DEFAULT_PGDATA: Final = "/var/tmp/thingspace-sms-sync-bench/history-store-pgdata"
README_BEGIN: Final = "<!-- bench:history-store:begin -->"
README_END: Final = "<!-- bench:history-store:end -->"
TARGET_BYTES: Final = 400.0
TARGET_CPU_MS: Final = 1.5
TARGET_GROWTH: Final = 1.1
STEPS: Final = ("bytes", "cpu", "growth", "shapes")
SHAPES_BEGIN: Final = "<!-- bench:history-store-shapes:begin -->"
SHAPES_END: Final = "<!-- bench:history-store-shapes:end -->"
# Issue 27's targets per traffic shape (sync_worker.simulator.traffic.SHAPES): bytes per message.
SHAPE_BYTES: Final = {"one-id": 400.0, "mixed": 400.0, "three-ids": 450.0}
TARGET_READ_US: Final = 3.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    messages: int  # 1. messages loaded per variant
    accounts: int  # 1. accounts they are spread over
    blocks: int  # 2. blocks committed per repetition
    reps: int  # 2 and 3
    growth_rows: int  # 3. rows already stored
    growth_blocks: int  # 3. blocks timed per repetition and database
    shape_messages: int = 200_000  # 4. messages loaded per traffic shape
    shape_blocks: int = 1_000  # 4. blocks timed per traffic shape


FULL: Final = Sizes(
    messages=1_000_000, accounts=4, blocks=1_000, reps=3, growth_rows=30_000_000, growth_blocks=300
)
QUICK: Final = Sizes(
    messages=20_000,
    accounts=2,
    blocks=100,
    reps=3,
    growth_rows=300_000,
    growth_blocks=50,
    shape_messages=20_000,
    shape_blocks=100,
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, stdout=subprocess.PIPE).stdout


def working_tree() -> str:
    """``working tree at <HEAD>``, and whether ``sync_worker/`` or ``sql/`` differ from it."""
    head = _git("rev-parse", "--short", "HEAD").decode().strip()
    dirty = bool(_git("status", "--porcelain", "--", "sync_worker", "sql").strip())
    return f"working tree at {head}{' + uncommitted changes' if dirty else ''}"


def export_baseline(commit: str, dest: Path) -> tuple[Path, str]:
    """``sync_worker/`` and ``sql/`` of ``commit`` under ``dest``; (tree, full commit id).

    Only those two: ``bench`` itself still comes from this tree (``PYTHONPATH``)."""
    full = _git("rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
    archive = _git("archive", "--format=tar", full, "sync_worker", "sql")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest, full


def run_child(tree: Path, spec: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    """``bench.history_measure`` with ``sync_worker`` imported from ``tree``; its JSON result."""
    env = in_tree.env_for(tree)
    argv = [sys.executable, "-m", "bench.history_measure", json.dumps({**spec, "tree": str(tree)})]
    done = subprocess.run(
        argv, check=False, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['task']} in {tree} exited {done.returncode} (its stderr is above)")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise RuntimeError(f"{spec['task']} in {tree} printed no JSON result")


@dataclasses.dataclass
class Run:
    sizes: Sizes
    trees: dict[str, Path]
    data_dir: Path
    results: harness.Results
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


def step_bytes(run: Run) -> None:
    sz = run.sizes
    for variant, tree in run.trees.items():
        _log(f"  {variant}: {sz.messages:,} messages over {sz.accounts} accounts ...")
        out = run_child(tree, {"task": "bytes", "messages": sz.messages, "accounts": sz.accounts})
        run.raw[f"bytes_{variant}"] = out
        _log(
            f"  {variant}: {out['rows_stored']:,} rows, {out['sizes']['total'] / 2**20:,.1f} MiB -> "
            f"{out['bytes_per_message']:.0f} bytes/message (loaded in {out['load_seconds']:.0f} s)"
        )
        run.results.add(
            harness.Figure(
                f"bytes_{variant}",
                f"1. bytes per stored message, {variant}",
                "bytes",
                (out["bytes_per_message"],),
                False,
                note=f"{out['rows_stored']:,} rows stored of {out['received']:,} received; "
                "after VACUUM ANALYZE",
            )
        )


def step_cpu(run: Run) -> None:
    sz = run.sizes
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in run.trees}
    variants = list(run.trees)
    for rep in range(sz.reps):
        # Same traffic for both in a repetition; alternate who goes first against drift.
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            out = run_child(run.trees[variant], {"task": "cpu", "blocks": sz.blocks, "seed": 100 + rep})
            per[variant].append(out)
            _log(
                f"  {variant} rep {rep + 1}: postgres CPU {out['pg_cpu_ms_per_block']:.2f} ms/block "
                f"(backend {out['pg_backend_cpu_ms_per_block']:.2f}), "
                f"wall {out['wall_ms_per_block']:.2f} ms/block"
            )
    run.raw["cpu"] = per
    figures = (
        ("pg_cpu_ms_per_block", "2. Postgres CPU per block (postmaster + all children)"),
        ("pg_backend_cpu_ms_per_block", "2. of which the writing backend"),
        ("pg_other_cpu_ms_per_block", "2. of which other Postgres processes (WAL writer, checkpointer, ...)"),
        ("client_cpu_ms_per_block", "2. client (bench process) CPU per block"),
        ("wall_ms_per_block", "2. wall per block (mean)"),
        ("wall_ms_median_block", "2. wall per block (median block)"),
    )
    for variant, outs in per.items():
        for key, label in figures:
            run.results.add(
                harness.Figure(
                    f"{key}_{variant}",
                    f"{label}, {variant}",
                    "ms",
                    tuple(float(o[key]) for o in outs),
                    False,
                    note=f"{sz.blocks:,} blocks of 100 per repetition",
                )
            )


def step_growth(run: Run) -> None:
    sz = run.sizes
    spec = {
        "task": "growth",
        "rows": sz.growth_rows,
        "blocks": sz.growth_blocks,
        "reps": sz.reps,
        "data_dir": str(run.data_dir),
    }
    out = run_child(run.trees["after"], spec, timeout=4 * 3600.0)
    run.raw["growth"] = out
    present = int(out["rows_present"])
    run.results.add(
        harness.Figure(
            "growth_empty",
            "3. per-block commit into an empty database, after",
            "ms",
            tuple(out["empty_ms"]),
            False,
            note=f"median of {sz.growth_blocks} blocks per repetition; each block goes into both databases "
            "back to back, order alternating",
        )
    )
    run.results.add(
        harness.Figure(
            "growth_big",
            f"3. per-block commit with {present:,} rows stored, after",
            "ms",
            tuple(out["big_ms"]),
            False,
            note=f"{out['rows_in_written_partition']:,} of them in the written month's partition; "
            + str(out["provenance"]),
        )
    )
    for label in ("empty", "big"):
        run.results.add(
            harness.Figure(
                f"growth_wal_{label}",
                f"3. WAL per block, {label} database",
                "bytes",
                tuple(out["wal_bytes_per_block"][label]),
                False,
                note="each block's own WAL, full-page images included (a CHECKPOINT starts each repetition)",
            )
        )
    run.results.add(
        harness.Figure(
            "growth_ratio",
            "3. big / empty, per repetition",
            "x",
            tuple(out["ratio"]),
            False,
        )
    )


def step_shapes(run: Run) -> None:
    sz = run.sizes
    for name in SHAPE_BYTES:
        spec = {"task": "shape", "shape": name, "messages": sz.shape_messages, "blocks": sz.shape_blocks}
        out = run_child(run.trees["after"], spec)
        run.raw.setdefault("shapes", {})[name] = out
        _log(
            f"  {name}: {out['bytes_per_message']:.0f} bytes/message, {out['pg_cpu_ms_per_block']:.2f} ms "
            f"Postgres CPU/block, raw_json {out['read_raw_json_us_per_row']:.2f} us/row"
        )
        note = (
            f"{out['rows_stored']:,} rows, {out['multi_device_share']:.0%} with several devices, "
            f"{out['kept_share']:.0%} keep their original"
        )
        for key, label, unit in (
            ("bytes_per_message", "bytes per stored message", "bytes"),
            ("pg_cpu_ms_per_block", "Postgres CPU per block of 100", "ms"),
            ("read_raw_json_us_per_row", "raw_json read cost per row (beyond reading message)", "us"),
            ("read_raw_us_per_row", "raw read cost per row (beyond reading message)", "us"),
        ):
            run.results.add(
                harness.Figure(
                    f"shape_{key}_{name}", f"4. {label}, {name}", unit, (float(out[key]),), False, note=note
                )
            )


STEP_FUNCTIONS: Final[dict[str, Callable[[Run], None]]] = {
    "bytes": step_bytes,
    "cpu": step_cpu,
    "growth": step_growth,
    "shapes": step_shapes,
}


def shape_table(raw: dict[str, Any], load: str) -> str:
    """Issue 27's targets table, one row per measure and shape, from one run's shapes step."""
    shapes = raw.get("shapes", {})
    lines = [
        f"One run of the shapes step ({load}); each shape on an embedded PostgreSQL 18 of its own.",
        "",
        "| measure | shape | result | target | met |",
        "|---|---|---|---|---|",
    ]
    for name, out in shapes.items():
        target = SHAPE_BYTES[name]
        got = float(out["bytes_per_message"])
        lines.append(
            f"| bytes/message ({out['multi_device_share']:.0%} multi-device, "
            f"{out['kept_share']:.0%} originals kept) | {name} | {got:.0f} | <= {target:.0f} "
            f"| {'yes' if got <= target else '**no**'} |"
        )
    for name, out in shapes.items():
        got = float(out["pg_cpu_ms_per_block"])
        lines.append(
            f"| Postgres CPU per block of 100 | {name} | {got:.2f} ms | <= {TARGET_CPU_MS} ms "
            f"| {'yes' if got <= TARGET_CPU_MS else '**no**'} |"
        )
    for name, out in shapes.items():
        got = float(out["read_raw_json_us_per_row"])
        lines.append(
            f"| raw_json read cost per row (raw: {float(out['read_raw_us_per_row']):.1f} us) | {name} "
            f"| {got:.1f} us | <= {TARGET_READ_US:.0f} us | {'yes' if got <= TARGET_READ_US else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def verdicts(results: harness.Results) -> list[harness.Verdict]:
    f = results.get
    out: list[harness.Verdict] = []
    before, after = f("bytes_before"), f("bytes_after")
    if after:
        text = f"{after.median:.0f} bytes/message"
        if before:
            text = f"{before.median:.0f} -> {text} ({after.median / before.median:.2f} x)"
        out.append(
            harness.Verdict("1. bytes", f"<= {TARGET_BYTES:.0f} bytes", text, after.median <= TARGET_BYTES)
        )
    cb, ca = f("pg_cpu_ms_per_block_before"), f("pg_cpu_ms_per_block_after")
    if ca:
        text = f"{ca.median:.2f} ms/block"
        if cb:
            text = f"{cb.median:.2f} -> {text} ({ca.median / cb.median:.2f} x)"
        wb, wa = f("wall_ms_per_block_before"), f("wall_ms_per_block_after")
        if wa:
            text += f"; wall {wb.median:.2f} -> {wa.median:.2f} ms/block" if wb else f"; wall {wa.median:.2f}"
        out.append(
            harness.Verdict(
                "2. Postgres CPU", f"<= {TARGET_CPU_MS} ms per block", text, ca.median <= TARGET_CPU_MS
            )
        )
    ge, gb = f("growth_empty"), f("growth_big")
    if ge and gb:
        ratio = gb.median / ge.median
        out.append(
            harness.Verdict(
                "3. growth",
                f"big within {TARGET_GROWTH}x of empty (medians)",
                f"{gb.median:.3f} ms vs {ge.median:.3f} ms = {ratio:.2f} x",
                ratio <= TARGET_GROWTH,
            )
        )
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _size_tables(raw: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for variant in ("before", "after"):
        out = raw.get(f"bytes_{variant}")
        if not out:
            continue
        rows = max(1, int(out["rows_stored"]))
        lines += [
            "",
            f"**Where the bytes go, {variant}** "
            f"({out['rows_stored']:,} rows; MiB, and bytes per stored message)",
            "",
            "| relation | pieces | heap | fsm+vm | TOAST | indexes | total | bytes/message |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for table, t in out["sizes"]["tables"].items():
            lines.append(
                f"| {table} | {t['pieces']} | {_mib(t['heap'])} | {_mib(t['maps'])} | {_mib(t['toast'])} "
                f"| {_mib(t['indexes'])} | {_mib(t['total'])} | {t['total'] / rows:.0f} |"
            )
        for ix in out["sizes"]["indexes"]:
            lines.append(
                f"| index {ix['index']} | {ix['pieces']} | | | | {_mib(ix['bytes'])} | "
                f"| {ix['bytes'] / rows:.0f} |"
            )
        lines.append(
            f"| **all** | | | | | | {_mib(out['sizes']['total'])} | **{out['bytes_per_message']:.0f}** |"
        )
        loaded = out.get("bytes_per_message_as_loaded")
        if loaded:
            lines.append("")
            lines.append(f"As loaded, before VACUUM: {loaded:.0f} bytes/message.")
        for table, widths in out.get("column_widths", {}).items():
            cols = ", ".join(f"{k} {v:g}" for k, v in widths.items())
            lines.append("")
            lines.append(
                f"Average stored width in bytes, {table} ({out['row_counts'].get(table, 0):,} rows): {cols}."
            )
    return lines


def render(results: harness.Results, raw: dict[str, Any], command: str) -> str:
    env = results.environment
    lines = [
        f"Results of a {'quick (development)' if results.quick else 'full'} run started "
        f"{results.started_at} (`{command}`).",
        "",
        f"- CPU: {env.get('host_cpu')} x {env.get('cpus')}, RAM {env.get('mem_total_mib')} MiB, "
        f"{env.get('os')}, Python {env.get('python')}",
    ]
    for key in ("variants", "postgres_settings", "workload"):
        if key in env:
            value = env[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {value}")
    lines += ["", "| measure | target | result (before -> after) | met |", "|---|---|---|---|"]
    for v in results.verdicts:
        met = "n/a" if v.met is None else ("yes" if v.met else "**no**")
        lines.append(f"| {v.scenario} | {v.target} | {v.result} | {met} |")
    lines += [
        "",
        "| figure | median | min .. max | spread | reps | values | note |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(harness.figure_row(fig) for fig in results.figures.values())
    lines += _size_tables(raw)
    growth = raw.get("growth")
    if growth:
        big = growth["big_sizes"]
        lines += [
            "",
            f"The {growth['rows_present']:,}-row database: {_mib(big['total'])} MiB in the history tables "
            f"({big['total'] / max(1, growth['rows_present']):.0f} bytes/row, SQL-generated rows).",
        ]
    for label, plan in (growth or {}).get("explain", {}).items():
        lines += [
            "",
            f"**EXPLAIN (ANALYZE, BUFFERS, WAL) of commit_block into the {label} database** "
            "(one more fresh block after the timed ones, rolled back)",
            "",
            "```",
            str(plan).rstrip(),
            "```",
        ]
    for variant in ("before", "after"):
        outs = raw.get("cpu", {}).get(variant)
        if outs:
            lines += [
                "",
                f"**EXPLAIN (ANALYZE, BUFFERS, WAL) of commit_block, {variant}** "
                "(one fresh block of 100 into the database of the last repetition, "
                f"{outs[-1]['inserted']:,} rows present, rolled back)",
                "",
                "```",
                str(outs[-1]["explain"]).rstrip(),
                "```",
            ]
    if results.skipped:
        lines += ["", "**Not measured in this run**", ""] + [f"- {s}" for s in results.skipped]
    if results.notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in results.notes]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.history_store", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development (~3 min)")
    parser.add_argument("--only", action="append", choices=STEPS, help="run only these steps (repeatable)")
    parser.add_argument("--skip-30m", action="store_true", help="skip step 3 (the big-table comparison)")
    parser.add_argument("--messages", type=int, help="step 1: messages per variant")
    parser.add_argument("--accounts", type=int, help="step 1: accounts they are spread over")
    parser.add_argument("--blocks", type=int, help="step 2: blocks per repetition")
    parser.add_argument("--reps", type=int, help="steps 2 and 3: repetitions")
    parser.add_argument("--growth-rows", type=int, help="step 3: rows already stored")
    parser.add_argument("--growth-blocks", type=int, help="step 3: blocks timed per repetition")
    parser.add_argument("--shape-messages", type=int, help="step 4: messages loaded per traffic shape")
    parser.add_argument("--shape-blocks", type=int, help="step 4: blocks timed per traffic shape")
    parser.add_argument("--baseline", default=BASELINE, help="the 'before' commit (default %(default)s)")
    harness.add_readme_option(parser)
    return parser


def _environment(results: harness.Results, sizes: Sizes, baseline: str) -> None:
    results.environment["variants"] = {
        "before": f"{baseline[:7]} (v1: sms_history + sms_history_device)",
        "after": working_tree(),
    }
    results.environment["workload"] = {
        "block_size": 100,
        "messages": sizes.messages,
        "accounts": sizes.accounts,
        "cpu_blocks": sizes.blocks,
        "reps": sizes.reps,
        "growth_rows": sizes.growth_rows,
        "growth_blocks": sizes.growth_blocks,
        "server": "embedded PostgreSQL, one per child process (fsync, synchronous_commit on)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        "messages": args.messages,
        "accounts": args.accounts,
        "blocks": args.blocks,
        "reps": args.reps,
        "growth_rows": args.growth_rows,
        "growth_blocks": args.growth_blocks,
        "shape_messages": args.shape_messages,
        "shape_blocks": args.shape_blocks,
    }
    sizes = dataclasses.replace(
        QUICK if args.quick else FULL, **{k: max(1, v) for k, v in overrides.items() if v is not None}
    )
    steps = [s for s in STEPS if (not args.only or s in args.only) and not (s == "growth" and args.skip_30m)]
    customised = any(v is not None for v in overrides.values()) or len(steps) < len(STEPS)
    write_readme = args.readme if args.readme is not None else (not args.quick and not customised)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.history_store", *given])

    started = time.perf_counter()
    results = harness.Results(
        started_at=harness.now_utc(), quick=args.quick, environment=harness.environment()
    )
    data_dir = Path(os.environ.get("SYNC_BENCH_HISTORY_PGDATA", DEFAULT_PGDATA))
    with tempfile.TemporaryDirectory(prefix="history-store-baseline-") as tmp:
        before, full = export_baseline(args.baseline, Path(tmp))
        _environment(results, sizes, full)
        run = Run(sizes=sizes, trees={"before": before, "after": ROOT}, data_dir=data_dir, results=results)
        harness.run_steps(
            [(s, functools.partial(STEP_FUNCTIONS[s], run)) for s in steps],
            results.skipped,
            results.load_by_step,
            _log,
        )
    for out in run.raw.get("cpu", {}).get("after", [])[:1]:
        results.environment["postgres_settings"] = out["postgres_settings"]
    if "growth" not in steps:
        results.skipped.append("3. growth: not selected (--skip-30m / --only)")
    results.verdicts = verdicts(results)
    if run.raw.get("shapes"):
        loads = ", ".join(f"{k} {v}" for k, v in results.load_by_step.items())
        table = shape_table(
            run.raw, f"started {results.started_at}, `{command}`, 1-minute load average {loads}"
        )
        print(table)
        if args.readme is not False:
            harness.write_readme_section(HERE / "README.md", table, SHAPES_BEGIN, SHAPES_END)
    results.notes.append(
        "1-minute load average after each step (2 CPUs shared with other work): "
        + ", ".join(f"{k} {v}" for k, v in results.load_by_step.items())
    )
    results.notes.append(f"whole run took {time.perf_counter() - started:.0f} s")
    text = render(results, run.raw, command)
    harness.publish(
        text,
        {**results.as_dict(), "raw": run.raw, "sizes": dataclasses.asdict(sizes)},
        harness.results_path("history-store-", results.started_at, args.quick),
        _log,
        (README_BEGIN, README_END) if write_readme else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
