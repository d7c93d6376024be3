"""The measurements of ``bench.history_store``, run inside one variant's process.

``python -m bench.history_measure '<spec json>'`` is started by ``bench.history_store`` with
``PYTHONPATH`` (and the working directory) set to the tree under test, so ``import sync_worker``
resolves to that tree's package and ``queries.sql_root()`` to its ``sql/``: the same code measures
the v1 baseline and the working tree. It prints one JSON object (its results) as the last line
of stdout; progress goes to stderr.

Only the API both versions share is used: ``migrations.migrate`` (through ``bench.pg``),
``rows.build_rows``, ``store.start_run``, ``store.commit_block(conn, run_id, HistoryPage)`` and,
for the EXPLAIN, ``store._block_params`` with ``queries.get("commit_block")``.
``store.ensure_partitions`` exists in v2 only and is called when present.

Here: the tasks and the entry point, with bytes, Postgres CPU per block and traffic shapes; the growth
task is ``bench.history_growth``, the blocks ``bench.history_blocks``, the sizes ``bench.history_sizes``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg

from bench import history_blocks, history_growth, history_sizes, in_tree, pg, proc, substitute

Spec = dict[str, Any]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu_seconds(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]  # psutil has no inline types

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def task_bytes(spec: Spec) -> dict[str, Any]:
    """``messages`` of the simulator's traffic over ``accounts``, through ``store.commit_block``."""
    from sync_worker import store

    n, n_accounts = int(spec["messages"]), int(spec["accounts"])
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        dsn = pg.fresh_database(admin, "hs_bytes")
        pg_pid = proc.postmaster_pid(admin)
        names = [f"acct-{a:02d}" for a in range(n_accounts)]
        share = [n // n_accounts + (1 if a < n % n_accounts else 0) for a in range(n_accounts)]
        streams = [
            history_blocks.pages(name, k, seed=1000 + a)
            for a, (name, k) in enumerate(zip(names, share, strict=True))
        ]
        received = inserted = blocks = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_ids = {name: store.start_run(conn, name) for name in names}
            # Accounts take turns block by block, as concurrent accounts' commits interleave.
            t0 = time.perf_counter()
            with proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in itertools.chain.from_iterable(itertools.zip_longest(*streams)):
                    if page is None:
                        continue
                    result = store.commit_block(conn, run_ids[page.account_name], page)
                    received += result.received
                    inserted += result.inserted
                    blocks += 1
                    if blocks % 1000 == 0:
                        _log(
                            f"    {blocks * history_blocks.BLOCK:,} messages committed"
                            f" ({time.perf_counter() - t0:.0f} s)"
                        )
            loaded = history_sizes.sizes(conn)
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
            vacuumed = history_sizes.sizes(conn)
            rows_stored = history_sizes.count(conn, "sms_history")
            tables = history_sizes.history_tables(conn)
            widths = {t: history_sizes.column_widths(conn, t) for t in tables}
            counts = {t: history_sizes.count(conn, t) for t in tables}
    return {
        "messages": n,
        "accounts": n_accounts,
        "blocks": blocks,
        "received": received,
        "inserted": inserted,
        "rows_stored": rows_stored,
        "row_counts": counts,
        "load_seconds": cpu.wall,
        "load_cpu_seconds": {k: v for k, v in cpu.spent.items() if k != "simulator"},
        "sizes_as_loaded": loaded,
        "sizes": vacuumed,
        "bytes_per_message": vacuumed["total"] / rows_stored if rows_stored else float("nan"),
        "bytes_per_message_as_loaded": loaded["total"] / rows_stored if rows_stored else float("nan"),
        "column_widths": widths,
    }


# --- Postgres CPU per block -------------------------------------------------------


def task_cpu(spec: Spec) -> dict[str, Any]:
    """``blocks`` blocks of rows built beforehand, committed by ``store.commit_block`` into an empty
    migrated database: Postgres CPU (postmaster and every child, psutil, as bench.scenarios
    measures it) and wall time per block."""
    from sync_worker import store

    n_blocks, seed = int(spec["blocks"]), int(spec["seed"])
    account = "acct-cpu"
    page_list = list(history_blocks.pages(account, n_blocks * history_blocks.BLOCK, seed=seed))
    built = history_blocks.built(page_list)
    probe = list(history_blocks.pages("acct-explain", history_blocks.BLOCK, seed=seed + 1))
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        dsn = pg.fresh_database(admin, "hs_cpu")
        pg_pid = proc.postmaster_pid(admin)
        partitioned = history_blocks.ensure_partitions(dsn, built + history_blocks.built(probe))
        pg.checkpoint(dsn)
        per_block: list[float] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_id = store.start_run(conn, account)
            backend_pid = conn.info.backend_pid
            backend_before = _cpu_seconds(backend_pid)
            inserted = 0
            with substitute.prebuilt_rows(page_list, built), proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in page_list:
                    t0 = time.perf_counter()
                    inserted += store.commit_block(conn, run_id, page).inserted
                    per_block.append((time.perf_counter() - t0) * 1000)
            backend = _cpu_seconds(backend_pid) - backend_before
            plan = history_blocks.explain_block(conn, run_id, probe[0])
        settings = pg.settings(admin)
    pg_cpu = cpu.spent.get("postgres", float("nan"))
    return {
        "blocks": n_blocks,
        "inserted": inserted,
        "partitions_created_untimed": partitioned,
        "pg_cpu_ms_per_block": pg_cpu / n_blocks * 1000,
        "pg_backend_cpu_ms_per_block": backend / n_blocks * 1000,
        # psutil reads CPU in clock ticks (10 ms): a difference below that is noise, not negative.
        "pg_other_cpu_ms_per_block": round(max(0.0, pg_cpu - backend) / n_blocks * 1000, 3),
        "client_cpu_ms_per_block": cpu.spent.get("worker", float("nan")) / n_blocks * 1000,
        "wall_ms_per_block": cpu.wall / n_blocks * 1000,
        "wall_ms_median_block": statistics.median(per_block),
        "explain": plan,
        "postgres_settings": settings,
    }


# --- traffic shapes (issue 27's targets): bytes, Postgres CPU per block, raw_json read cost -------------


def _read_seconds(conn: psycopg.Connection[Any], expression: LiteralString, reps: int = 3) -> float:
    """The fastest of ``reps`` server-side executions of ``SELECT sum(length(<expression>))`` over
    sms_history (EXPLAIN ANALYZE's execution time, without the client's share)."""
    best = math.inf
    for _ in range(reps):
        plan = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT sum(length("
            + expression
            + ")) FROM sms_history"
        ).fetchone()
        assert plan is not None
        document = plan[0] if isinstance(plan[0], list) else json.loads(plan[0])
        best = min(best, float(document[0]["Execution Time"]) / 1000)
    return best


def task_shape(spec: Spec) -> dict[str, Any]:
    """One traffic shape: ``messages`` through ``store.commit_block`` (bytes per message after
    VACUUM, the share of originals kept, raw_json and raw read cost per row), then ``blocks``
    prebuilt blocks into an empty database (Postgres CPU per block, as ``task_cpu``)."""
    from sync_worker import store

    name, n, n_blocks = str(spec["shape"]), int(spec["messages"]), int(spec["blocks"])
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        pg_pid = proc.postmaster_pid(admin)
        dsn = pg.fresh_database(admin, "hs_shape")
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_id = store.start_run(conn, "acct-shape")
            received = 0
            for page in history_blocks.pages("acct-shape", n, seed=3100, shape=name):
                received += store.commit_block(conn, run_id, page).received
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
            measured = history_sizes.sizes(conn)
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE raw_kept IS NOT NULL),"
                " count(*) FILTER (WHERE device_count > 1) FROM sms_message"
            ).fetchone()
            assert row is not None
            stored, kept, multi = (int(v) for v in row)
            columns = _read_seconds(conn, "message")
            raw_json = _read_seconds(conn, "raw_json")
            raw = _read_seconds(conn, "raw::text")
            widths = {t: history_sizes.column_widths(conn, t) for t in history_sizes.history_tables(conn)}
        pg.drop_database(admin, "hs_shape")

        account = "acct-shape-cpu"
        page_list = list(
            history_blocks.pages(account, n_blocks * history_blocks.BLOCK, seed=3200, shape=name)
        )
        built = history_blocks.built(page_list)
        dsn = pg.fresh_database(admin, "hs_shape_cpu")
        history_blocks.ensure_partitions(dsn, built)
        pg.checkpoint(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            cpu_run = store.start_run(conn, account)
            with substitute.prebuilt_rows(page_list, built), proc.CpuMeter(os.getpid(), pg_pid) as cpu:
                for page in page_list:
                    store.commit_block(conn, cpu_run, page)
        pg.drop_database(admin, "hs_shape_cpu")
    per_row = 1e6 / max(1, stored)
    return {
        "shape": name,
        "received": received,
        "rows_stored": stored,
        "kept_share": kept / max(1, stored),
        "multi_device_share": multi / max(1, stored),
        "bytes_per_message": measured["total"] / max(1, stored),
        "sizes": measured,
        "column_widths": widths,
        "read_message_us_per_row": columns * per_row,
        "read_raw_json_us_per_row": (raw_json - columns) * per_row,
        "read_raw_us_per_row": (raw - columns) * per_row,
        "blocks": n_blocks,
        "pg_cpu_ms_per_block": cpu.spent.get("postgres", float("nan")) / n_blocks * 1000,
        "wall_ms_per_block": cpu.wall / n_blocks * 1000,
    }


TASKS: Final = {
    "bytes": task_bytes,
    "cpu": task_cpu,
    "growth": history_growth.task_growth,
    "shape": task_shape,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec: Spec = json.loads(args[0])
    found = in_tree.check(Path(spec["tree"]))
    substitute.quiet_production_logging()
    result = TASKS[spec["task"]](spec)
    result["identity"] = found
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
