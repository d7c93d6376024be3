"""Scenarios 5-7 of issue 6, each on a setup of its own rather than the in-process drain of
``bench.scenarios``: the worker as a child process with a simulator of its own (5, memory), a block's
write straight through ``store.commit_block`` into the bulk-loaded big table (6, growth), and the dlt
peer on the same backlog (7).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import psycopg

from bench import harness, in_tree, pg, proc, scenario_context

# --- 5. memory ------------------------------------------------------------------


def _memory_run(ctx: scenario_context.Context, n: int, seed: int) -> tuple[float, float]:
    """One worker process draining ``n`` messages from its own simulator: (peak RSS MiB, seconds)."""
    # A simulator per run: its delivered list would otherwise pile up millions of messages.
    with proc.SimHost() as sim:
        account = ctx.name("mem")
        sim.seed(account, n, seed=seed)
        name, dsn = ctx.fresh_db("mem")
        env = in_tree.env_for(ctx.tree)
        env.update(ctx.worker_env(dsn, [account], 1))
        env["THINGSPACE_BASE_URL"] = sim.base_url
        run = proc.run_measured(in_tree.argv(ctx.tree, "once"), env=env, timeout=3600, cwd=ctx.tree)
        if run.returncode != 0:
            raise RuntimeError(f"worker exited {run.returncode}: {run.stderr[-2000:]}")
        summary = run.last_json()
        if sim.queued(account) != 0 or sim.acknowledged(account) != n:
            raise RuntimeError(f"worker did not drain {n} messages; summary {summary}")
    pg.drop_database(ctx.admin_dsn, name)
    return run.peak_rss_mib, run.wall_seconds


def memory(ctx: scenario_context.Context) -> None:
    import concurrent.futures

    sz = ctx.sizes
    for label, n in (("small", sz.memory_small), ("large", sz.memory_large)):
        # The repetitions run side by side: peak RSS is per process and does not
        # depend on the others, and three sequential million-message drains
        # would take most of the run's time budget. Their wall times are shown
        # for information only.
        with concurrent.futures.ThreadPoolExecutor(sz.reps) as pool:
            futures = [pool.submit(_memory_run, ctx, n, 500 + rep) for rep in range(sz.reps)]
            runs = [f.result() for f in futures]
        for rep, (peak, seconds) in enumerate(runs):
            ctx.log(f"  memory {n:,} rep {rep + 1}: peak RSS {peak:.1f} MiB, drained in {seconds:.1f} s")
        ctx.results.add(
            harness.Figure(
                f"memory_{label}",
                f"5. worker process peak RSS draining {n:,}",
                "MiB",
                tuple(peak for peak, _ in runs),
                False,
                note=f"`python -m sync_worker once`, the child's VmHWM; {sz.reps} runs side by side",
            )
        )


# --- 6. cost as the table grows ------------------------------------------------


def _synthetic_pages(account: str, blocks: int, seed: int) -> list[Any]:
    from sync_worker import models, simulator

    raw = simulator.seed_messages(blocks * scenario_context.BLOCK, seed=seed)
    pages = []
    for b in range(blocks):
        chunk = raw[b * scenario_context.BLOCK : (b + 1) * scenario_context.BLOCK]
        pages.append(
            models.HistoryPage(
                account_name=account,
                messages=tuple(models.SMSMessage.from_wire(m) for m in chunk),
                has_more_data=b < blocks - 1,
                status=202 if b < blocks - 1 else 200,
                next=f"tok{b:06d}" if b < blocks - 1 else None,
            )
        )
    return pages


def _timed_commits(dsn: str, account: str, pages: list[Any]) -> float:
    """Median per-block write time (ms) of ``store.commit_block`` over ``pages``."""
    import statistics

    from sync_worker import store

    pg.checkpoint(dsn)
    per_block: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_id = store.start_run(conn, account)
        for page in pages:
            t0 = time.perf_counter()
            store.commit_block(conn, run_id, page)
            per_block.append((time.perf_counter() - t0) * 1000)
    return statistics.median(per_block)


def growth(ctx: scenario_context.Context) -> None:
    sz = ctx.sizes
    empty_name, empty_dsn = ctx.fresh_db("growth_empty")
    ctx.log(f"  the {sz.big_table:,}-row database ...")
    # The history-store bench's loader and cache of big databases (loaded only for this step).
    from bench import bulk_history

    _, big_dsn, provenance = bulk_history.big_database(ctx.admin_dsn, sz.big_table)
    present = pg.count_rows(big_dsn)
    ctx.log(f"  {present:,} rows present: {provenance}")
    empty: list[float] = []
    big: list[float] = []
    for rep in range(sz.reps):
        # The same messages in both databases, under accounts neither has seen.
        account = ctx.name("grow")
        pages = _synthetic_pages(account, sz.growth_blocks, seed=600 + rep)
        # Alternate which database goes first so drift on a shared machine hits both alike.
        if rep % 2 == 0:
            empty.append(_timed_commits(empty_dsn, account, pages))
            big.append(_timed_commits(big_dsn, account, pages))
        else:
            big.append(_timed_commits(big_dsn, account, pages))
            empty.append(_timed_commits(empty_dsn, account, pages))
        ctx.log(
            f"  growth rep {rep + 1}: empty {empty[-1]:.3f} ms, {present:,} rows {big[-1]:.3f} ms per block"
        )
    r = ctx.results
    r.add(
        harness.Figure(
            "growth_empty",
            "6. per-block write (commit_block) into an empty sms_history",
            "ms",
            tuple(empty),
            False,
            note=f"median of {sz.growth_blocks} blocks per repetition",
        )
    )
    r.add(
        harness.Figure(
            "growth_big",
            f"6. per-block write with {present:,} rows already present",
            "ms",
            tuple(big),
            False,
            note=provenance,
        )
    )
    pg.drop_database(ctx.admin_dsn, empty_name)


# --- 7. the dlt peer ------------------------------------------------------------


def peer(ctx: scenario_context.Context) -> None:
    from bench import peer_dlt

    sz = ctx.sizes
    env = ctx.sim.env
    headers = peer_dlt.login(
        ctx.sim.base_url,
        env["THINGSPACE_CLIENT_ID"],
        env["THINGSPACE_CLIENT_SECRET"],
        env["THINGSPACE_USERNAME"],
        env["THINGSPACE_PASSWORD"],
    )
    # (figure key, label, dlt loader file format): its default loader and its CSV (COPY) loader.
    variants: tuple[tuple[str, str, Literal["csv"] | None], ...] = (
        ("peer", "default loader (insert_values)", None),
        ("peer_csv", "CSV loader (COPY)", "csv"),
    )
    rates: dict[str, list[float]] = {key: [] for key, _, _ in variants}
    extract: dict[str, list[float]] = {key: [] for key, _, _ in variants}
    for rep in range(sz.reps):
        # Interleaved, so drift on a shared machine hits both loaders alike.
        for key, label, file_format in variants:
            account = ctx.name("peer")
            ctx.sim.seed(account, sz.peer_backlog, seed=200 + rep)
            name, dsn = ctx.fresh_db("peer")
            pg.checkpoint(dsn)
            result = peer_dlt.run_peer(
                base_url=ctx.sim.base_url,
                account=account,
                database_url=dsn,
                headers=headers,
                key_fn=peer_dlt.worker_keys,
                loader_file_format=file_format,
            )
            if ctx.sim.queued(account) != 0:
                raise RuntimeError(f"dlt left {ctx.sim.queued(account)} messages queued")
            # Throughput counts messages received, as for the worker (repeats dedupe to fewer rows).
            rates[key].append(sz.peer_backlog / result.seconds)
            extract[key].append(result.extract_seconds / result.seconds * 100)
            ctx.log(
                f"  dlt {label} rep {rep + 1}: {sz.peer_backlog} messages ({result.rows} rows) in "
                f"{result.seconds:.2f} s = {rates[key][-1]:,.0f} rows/s "
                f"(extract {result.extract_seconds:.1f} s, normalize+load {result.load_seconds:.1f} s)"
            )
            pg.drop_database(ctx.admin_dsn, name)
    r = ctx.results
    for key, label, _ in variants:
        r.add(
            harness.Figure(
                key,
                f"7. dlt {harness._version('dlt')} REST client + postgres merge, {label}, "
                f"backlog {sz.peer_backlog:,}",
                "rows/s",
                tuple(rates[key]),
                note="extracts everything before loading: acknowledges blocks before they are durable",
            )
        )
        r.add(
            harness.Figure(
                f"{key}_extract_share",
                f"7. dlt {label}: share of its time spent extracting (HTTP)",
                "%",
                tuple(extract[key]),
                False,
            )
        )
