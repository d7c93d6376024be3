"""The measurements of issue 6, each a function of a shared ``Context``.

Throughput figures count messages *received* (what the API delivered and the
worker acknowledged). The simulator's seed repeats ~2% of messages back to
back; a repeat that straddles a block boundary maps onto the same key (the
documented blind spot), so a few fewer rows than messages are stored, by the
worker and the dlt peer alike.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import psycopg

from bench import harness, in_tree, pg, proc, substitute

BLOCK = 100


# Round trips every pass makes before its first history request and no client can avoid: the
# OAuth token and the M2M session login. The ideals count them.
LOGIN_ROUND_TRIPS: Final = 2


def latency_ideal(accounts: int, each: int, concurrency: int, latency: float) -> tuple[float, float, str]:
    """Scenarios 4 and 4b's ideal wall time: (with the login, blocks only, how it is made up).

    Every block of an account is one request, in sequence (a block is acknowledged by the next
    request); ``concurrency`` accounts run at once, so ``ceil(accounts / concurrency)`` rounds;
    the login's round trips come first.
    """
    blocks = max(1, math.ceil(each / BLOCK))
    rounds = math.ceil(accounts / concurrency)
    bare = blocks * latency * rounds
    ideal = bare + LOGIN_ROUND_TRIPS * latency
    how = (
        f"ideal {ideal:.2f} s = {blocks} blocks x {latency} s x {rounds} rounds "
        f"+ {LOGIN_ROUND_TRIPS} login round trips"
    )
    return ideal, bare, how


@dataclasses.dataclass(frozen=True)
class Sizes:
    reps: int
    limit_backlog: int  # scenario 1: messages fetched / built / committed per repetition
    one_account: int  # scenario 2
    many_accounts: int  # scenario 3: number of accounts
    many_each: int  # scenario 3: messages per account
    many_concurrency: int
    latency: float  # scenario 4
    latency_accounts: int
    latency_each: int
    latency_concurrency: int
    wide_accounts: int  # scenario 4b: many small accounts at high concurrency (issue 14)
    wide_each: int
    wide_concurrency: int
    memory_small: int  # scenario 5
    memory_large: int
    big_table: int  # scenario 6: rows already present
    growth_blocks: int  # scenario 6: blocks timed per repetition
    peer_backlog: int  # scenario 7


FULL = Sizes(
    reps=3,
    limit_backlog=50_000,
    one_account=200_000,
    many_accounts=8,
    many_each=25_000,
    many_concurrency=8,
    latency=0.1,
    latency_accounts=50,
    latency_each=2_000,
    latency_concurrency=10,
    wide_accounts=500,
    wide_each=200,
    wide_concurrency=64,
    memory_small=10_000,
    memory_large=1_000_000,
    big_table=10_000_000,
    growth_blocks=300,
    peer_backlog=200_000,
)
QUICK = Sizes(
    reps=3,
    limit_backlog=5_000,
    one_account=10_000,
    many_accounts=4,
    many_each=2_500,
    many_concurrency=4,
    latency=0.1,
    latency_accounts=10,
    latency_each=500,
    latency_concurrency=5,
    wide_accounts=64,
    wide_each=100,
    wide_concurrency=32,
    memory_small=2_000,
    memory_large=20_000,
    big_table=200_000,
    growth_blocks=50,
    peer_backlog=10_000,
)


@dataclasses.dataclass
class Context:
    admin_dsn: str
    sim: proc.SimHost
    sizes: Sizes
    results: harness.Results
    log: Callable[[str], None]
    profile: bool = False
    pg_pid: int | None = None
    # The tree whose worker runs as a process, and the database its schema is cloned from
    # (bench.compare sets an older tree and a template that tree's own migrations built).
    tree: Path = in_tree.ROOT
    template: str = pg.TEMPLATE
    # next() on a count is atomic under the GIL: names stay unique across threads.
    _serial: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def name(self, prefix: str) -> str:
        """A fresh account / database name, so no repetition sees another's data."""
        return f"{prefix}-{os.getpid() % 10000:04d}-{next(self._serial):04d}"

    def worker_env(self, dsn: str, accounts: list[str], concurrency: int = 4) -> dict[str, str]:
        return {
            **self.sim.env,
            "SYNC_DATABASE_URL": dsn,
            "SYNC_ACCOUNTS": ",".join(accounts),
            "SYNC_CONCURRENCY": str(concurrency),
            # The bench drains whole backlogs; the run budget must never cut a run short.
            "SYNC_RUN_BUDGET_SECONDS": "86400",
            "SYNC_INTERVAL_SECONDS": "86400",
            "SYNC_LOG_FORMAT": "json",
            "SYNC_LOG_LEVEL": "INFO",
        }

    def fresh_db(self, prefix: str = "bench") -> tuple[str, str]:
        name = self.name(prefix).replace("-", "_")
        return name, pg.fresh_database(self.admin_dsn, name, self.template)


def _settings(env: Mapping[str, str]) -> Any:
    from sync_worker import config

    return config.load(env)


# --- 1. the limits ----------------------------------------------------------


def limits(ctx: Context) -> None:
    from sync_worker import app, client, rows, store

    sz = ctx.sizes
    fetch_ms: list[float] = []
    build_ms: list[float] = []
    commit_ms: list[float] = []
    ceilings: list[float] = []
    for rep in range(sz.reps):
        account = ctx.name("limit")
        ctx.sim.seed(account, sz.limit_backlog, seed=100 + rep)
        _, dsn = ctx.fresh_db("limit")
        settings = _settings(ctx.worker_env(dsn, [account]))
        with client.ThingSpaceClient(app.client_config(settings)) as api:
            # Log in outside the timed region: one login per process, not per block.
            warm = ctx.name("warm")
            ctx.sim.seed(warm, 1)
            api.sms.list_devices_sms_messages(warm)
            pages = []
            with harness.Stopwatch() as sw:
                for page in api.sms.iter_history_blocks(account):
                    if page.ticket is not None:
                        page.ticket.acknowledge_unstored()  # fetching is timed here; storing later
                    pages.append(page)
        fetch_ms.append(sw.elapsed * 1000 / len(pages))
        n_rows = sum(len(p.messages) for p in pages)
        assert n_rows == sz.limit_backlog, (n_rows, sz.limit_backlog)

        # What commit_block builds: the statement's columns (build_block), else the rows.
        build = getattr(rows, "build_block", rows.build_rows)
        with harness.Stopwatch() as sw:
            for p in pages:
                build(p.account_name, p.messages)
        build_ms.append(sw.elapsed * 1000 / len(pages))
        built = [rows.build_rows(p.account_name, p.messages) for p in pages]

        pg.checkpoint(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_id = store.start_run(conn, account)
            inserted = 0
            with substitute.prebuilt_rows(pages, built), harness.Stopwatch() as sw:
                for page in pages:
                    inserted += store.commit_block(conn, run_id, page).inserted
        commit_ms.append(sw.elapsed * 1000 / len(pages))
        # The seed repeats ~2% of messages verbatim; a repeat in a later block has the same key.
        assert 0.9 * n_rows < inserted <= n_rows, (inserted, n_rows)
        # Blocks are full except the last; per-row cost uses the real average block size.
        per_block = n_rows / len(pages)
        ceilings.append(per_block / ((fetch_ms[-1] + build_ms[-1] + commit_ms[-1]) / 1000))
        ctx.log(
            f"  limits rep {rep + 1}: fetch {fetch_ms[-1]:.2f} ms, build {build_ms[-1]:.2f} ms, "
            f"commit {commit_ms[-1]:.2f} ms per block -> ceiling {ceilings[-1]:,.0f} rows/s"
        )
    r = ctx.results
    r.add(harness.Figure("fetch_ms", "1. fetch + decode one block (no DB)", "ms", tuple(fetch_ms), False))
    r.add(
        harness.Figure(
            "build_ms", "1. build rows of one block (parse + key, no I/O)", "ms", tuple(build_ms), False
        )
    )
    r.add(
        harness.Figure(
            "commit_ms", "1. commit one block of 100 (write path alone)", "ms", tuple(commit_ms), False
        )
    )
    r.add(
        harness.Figure(
            "ceiling",
            "1. single-account ceiling 1/(fetch+build+commit)",
            "rows/s",
            tuple(ceilings),
            note="per repetition, from that repetition's three parts",
        )
    )


# --- 2 / 3. end to end, zero latency -------------------------------------------


def _sync_pass(
    ctx: Context, accounts: list[str], each: int, concurrency: int, seed: int
) -> tuple[float, int, dict[str, float]]:
    """Seed, then one timed ``app.sync_once``; returns (seconds, received, CPU seconds by process)."""
    from sync_worker import app

    for i, account in enumerate(accounts):
        ctx.sim.seed(account, each, seed=seed + i)
    _, dsn = ctx.fresh_db("e2e")
    settings = _settings(ctx.worker_env(dsn, accounts, concurrency))
    pg.checkpoint(dsn)
    with proc.CpuMeter(ctx.sim.pid(), ctx.pg_pid) as cpu, harness.Stopwatch() as sw:
        result = app.sync_once(settings)
    failed = [a for a in result.accounts if a.outcome != "succeeded"]
    if failed:
        raise RuntimeError(f"sync failed: {failed[0].error}")
    received = sum(a.received for a in result.accounts)
    if received != each * len(accounts):
        raise RuntimeError(f"received {received}, expected {each * len(accounts)}")
    inserted = sum(a.inserted for a in result.accounts)
    stored = pg.count_rows(dsn)
    if stored != inserted:
        raise RuntimeError(f"{stored} rows in sms_history, the runs reported {inserted} inserted")
    return sw.elapsed, received, cpu.spent


def _cpu_figures(
    ctx: Context, prefix: str, label: str, samples: list[tuple[float, int, dict[str, float]]]
) -> None:
    """CPU per block of each process, and how busy the machine's cores were: where the time went."""
    cores = os.cpu_count() or 1
    parts = sorted({k for _, _, spent in samples for k in spent})
    for part in parts:
        values = tuple(spent.get(part, 0.0) / (n / BLOCK) * 1000 for _, n, spent in samples)
        ctx.results.add(
            harness.Figure(f"{prefix}_cpu_{part}", f"{label}: {part} CPU per block", "ms", values, False)
        )
    busy = tuple(sum(spent.values()) / (cores * seconds) * 100 for seconds, _, spent in samples)
    ctx.results.add(
        harness.Figure(
            f"{prefix}_busy",
            f"{label}: share of the {cores} cores used by worker + simulator + postgres",
            "%",
            busy,
            note="the rest of the machine (other jobs) is not counted",
        )
    )


def one_account(ctx: Context) -> None:
    sz = ctx.sizes
    rates: list[float] = []
    samples = []
    for rep in range(sz.reps):
        account = ctx.name("one")
        seconds, received, spent = _sync_pass(ctx, [account], sz.one_account, 1, 200 + rep)
        samples.append((seconds, received, spent))
        rates.append(received / seconds)
        ctx.log(f"  one account rep {rep + 1}: {received} in {seconds:.2f} s = {rates[-1]:,.0f} rows/s")
    ctx.results.add(
        harness.Figure(
            "one_account", f"2. one account, zero latency, backlog {sz.one_account:,}", "rows/s", tuple(rates)
        )
    )
    _cpu_figures(ctx, "one", "2. one account", samples)


def many_accounts(ctx: Context) -> None:
    sz = ctx.sizes
    rates: list[float] = []
    samples = []
    for rep in range(sz.reps):
        accounts = [ctx.name("many") for _ in range(sz.many_accounts)]
        seconds, received, spent = _sync_pass(
            ctx, accounts, sz.many_each, sz.many_concurrency, 300 + 10 * rep
        )
        samples.append((seconds, received, spent))
        rates.append(received / seconds)
        ctx.log(f"  many accounts rep {rep + 1}: {received} in {seconds:.2f} s = {rates[-1]:,.0f} rows/s")
    ctx.results.add(
        harness.Figure(
            "many_accounts",
            f"3. {sz.many_accounts} accounts x {sz.many_each:,}, zero latency, "
            f"concurrency {sz.many_concurrency}",
            "rows/s",
            tuple(rates),
        )
    )
    _cpu_figures(ctx, "many", "3. many accounts", samples)


# --- 4. realistic latency -----------------------------------------------------


def latency(ctx: Context) -> None:
    sz = ctx.sizes
    blocks = math.ceil(sz.latency_each / BLOCK)
    rounds = math.ceil(sz.latency_accounts / sz.latency_concurrency)
    # The bench's first ideal counted only the blocks; the protocol also forces the login.
    ideal, bare, note = latency_ideal(
        sz.latency_accounts, sz.latency_each, sz.latency_concurrency, sz.latency
    )
    walls: list[float] = []
    ratios: list[float] = []
    bare_ratios: list[float] = []
    overhead_ms: list[float] = []
    ctx.sim.set_latency(sz.latency)
    try:
        for rep in range(sz.reps):
            accounts = [ctx.name("lat") for _ in range(sz.latency_accounts)]
            seconds, _, _ = _sync_pass(
                ctx, accounts, sz.latency_each, sz.latency_concurrency, 400 + 100 * rep
            )
            walls.append(seconds)
            ratios.append(seconds / ideal)
            bare_ratios.append(seconds / bare)
            # What the worker adds on top of the latency, per block of the critical path.
            overhead_ms.append((seconds - ideal) / (blocks * rounds) * 1000)
            ctx.log(f"  latency rep {rep + 1}: {seconds:.2f} s (ideal {ideal:.2f} s, blocks {bare:.2f} s)")
    finally:
        ctx.sim.set_latency(0.0)
    r = ctx.results
    label = (
        f"4. {sz.latency_accounts} accounts x {sz.latency_each:,} at {sz.latency * 1000:.0f} ms, "
        f"concurrency {sz.latency_concurrency}"
    )
    r.add(harness.Figure("latency_wall", f"{label}: wall time", "s", tuple(walls), False, note=note))
    r.add(
        harness.Figure("latency_ratio", f"{label}: wall / ideal (login counted)", "x", tuple(ratios), False)
    )
    r.add(
        harness.Figure(
            "latency_ratio_blocks",
            f"{label}: wall / blocks-only ideal (the ratio before the login was counted)",
            "x",
            tuple(bare_ratios),
            False,
            note=f"blocks-only ideal {bare:.2f} s",
        )
    )
    r.add(
        harness.Figure(
            "latency_overhead",
            "4. worker's own time per block on the critical path ((wall - ideal) / blocks in sequence)",
            "ms",
            tuple(overhead_ms),
            False,
            note="the login round trips are part of the ideal, not of this figure",
        )
    )
    ctx.results.environment.setdefault("workload", {})["latency_ideal_s"] = round(ideal, 3)
    ctx.results.environment.setdefault("workload", {})["latency_ideal_blocks_only_s"] = round(bare, 3)


def latency_wide(ctx: Context) -> None:
    """4b: many small accounts (a daemon's steady state) at high concurrency, 100 ms per request.

    The per-account costs (connection, lock, run row, cursor, finish) weigh here as much as the
    blocks; the CPU figures show the floor the machine sets: every process's CPU seconds over the
    cores, against the ideal wall time.
    """
    sz = ctx.sizes
    ideal, bare, how = latency_ideal(sz.wide_accounts, sz.wide_each, sz.wide_concurrency, sz.latency)
    walls: list[float] = []
    bare_walls: list[float] = []
    samples = []
    floors: list[float] = []
    cores = os.cpu_count() or 1
    ctx.sim.set_latency(sz.latency)
    try:
        for rep in range(sz.reps):
            accounts = [ctx.name("wide") for _ in range(sz.wide_accounts)]
            seconds, received, spent = _sync_pass(ctx, accounts, sz.wide_each, sz.wide_concurrency, 600 + rep)
            walls.append(seconds / ideal)
            bare_walls.append(seconds / bare)
            samples.append((seconds, received, spent))
            floors.append(sum(spent.values()) / cores / ideal)
            ctx.log(f"  wide rep {rep + 1}: {seconds:.2f} s (ideal {ideal:.2f} s), CPU {spent}")
    finally:
        ctx.sim.set_latency(0.0)
    label = (
        f"4b. {sz.wide_accounts} accounts x {sz.wide_each:,} at {sz.latency * 1000:.0f} ms, "
        f"concurrency {sz.wide_concurrency}"
    )
    r = ctx.results
    r.add(
        harness.Figure(
            "wide_ratio",
            f"{label}: wall / ideal (login counted)",
            "x",
            tuple(walls),
            False,
            note=how,
        )
    )
    r.add(
        harness.Figure(
            "wide_ratio_blocks",
            f"{label}: wall / blocks-only ideal (the ratio before the login was counted)",
            "x",
            tuple(bare_walls),
            False,
            note=f"blocks-only ideal {bare:.2f} s",
        )
    )
    r.add(
        harness.Figure(
            "wide_cpu_floor",
            f"{label}: CPU floor / ideal (CPU seconds of worker + simulator + postgres / cores)",
            "x",
            tuple(floors),
            False,
            note="no scheduling on these cores can beat this ratio",
        )
    )
    _cpu_figures(ctx, "wide", label, samples)


# --- 5. memory ------------------------------------------------------------------


def _memory_run(ctx: Context, n: int, seed: int) -> tuple[float, float]:
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


def memory(ctx: Context) -> None:
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

    raw = simulator.seed_messages(blocks * BLOCK, seed=seed)
    pages = []
    for b in range(blocks):
        chunk = raw[b * BLOCK : (b + 1) * BLOCK]
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


def growth(ctx: Context) -> None:
    sz = ctx.sizes
    empty_name, empty_dsn = ctx.fresh_db("growth_empty")
    ctx.log(f"  the {sz.big_table:,}-row database ...")
    # The history-store bench's loader and cache of big databases (loaded only for this step).
    from bench import history_measure

    _, big_dsn, provenance = history_measure.big_database(ctx.admin_dsn, sz.big_table)
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


def peer(ctx: Context) -> None:
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


# --- profiling ------------------------------------------------------------------


def profile_one_account(ctx: Context) -> None:
    """An extra, untimed pass of scenario 2 under pyinstrument: where a block's time goes."""
    from sync_worker import app, client, db, store, sync

    n = max(ctx.sizes.one_account // 4, 5_000)
    account = ctx.name("prof")
    ctx.sim.seed(account, n, seed=900)
    _, dsn = ctx.fresh_db("prof")
    settings = _settings(ctx.worker_env(dsn, [account]))
    # sync_once runs accounts on a thread pool and pyinstrument samples only the
    # thread it started on, so the same per-account loop runs here on this thread.
    with client.ThingSpaceClient(app.client_config(settings)) as api:
        result = _profiled(
            ctx,
            f"scenario 2 loop (sync.sync_account), one account, {n:,} messages, separate untimed pass",
            lambda: sync.sync_account(api, account, store.PostgresStore(db.connector(dsn))),
        )
    if result.outcome != "succeeded" or result.received != n:
        raise RuntimeError(f"profiled pass: {result.outcome} {result.received} {result.error}")


def _profiled(ctx: Context, name: str, fn: Callable[[], Any]) -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return fn()
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        return fn()
    finally:
        profiler.stop()
        buf = io.StringIO()
        buf.write(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
        ctx.results.profiles[name] = _trim_profile(buf.getvalue())


def _trim_profile(text: str, lines: int = 60) -> str:
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[:lines])
