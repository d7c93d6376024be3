"""``python -m bench.word_search``: what the opt-in word-search index costs (issue 26).

The same simulator traffic (``simulator.seed_messages``, blocks of 100 through ``store.commit_block``)
goes into two fresh migrated databases on one embedded server (or ``$SYNC_BENCH_DATABASE_URL``):
*plain*, and *word search*, where ``migrations.enable_word_search`` created the pg_trgm GIN index
first (what ``sync-worker migrate --word-search`` does). One database at a time, so the Postgres CPU
of a region (postmaster and all its children, ``bench.proc.CpuMeter``) is that database's alone,
in ``--reps`` repetitions, order alternating. Reported per database: Postgres CPU and wall per block
of 100, the CPU of the ``VACUUM`` that then folds the GIN pending list into the index (work an
insert either does itself when the list is full or leaves to autovacuum), and, after it, the bytes
of the trigram index and of all history relations per stored message.

Prints a table, writes ``bench/results/word-search-<timestamp>.json`` (gitignored) and, unless
``--no-readme``, the table between this benchmark's markers in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from bench import harness, history_blocks, history_sizes, pg, proc

README_BEGIN: Final = "<!-- bench:word-search:begin -->"
README_END: Final = "<!-- bench:word-search:end -->"
BLOCK: Final = 100
VARIANTS: Final = ("plain", "word search")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(admin: str, variant: str, messages: int, seed: int) -> dict[str, Any]:
    """One database of ``variant``: the traffic committed block by block, then VACUUM; CPU and sizes."""
    from sync_worker import identity, migrations, store

    name = "ws_plain" if variant == "plain" else "ws_trgm"
    dsn = pg.fresh_database(admin, name)
    pg_pid = proc.postmaster_pid(admin)
    pages = list(history_blocks.pages("acct-words", messages, seed=seed))
    with psycopg.connect(dsn, autocommit=True) as conn:
        if variant != "plain":
            migrations.enable_word_search(conn)
        stamps = [m.timestamp for p in pages for m in p.messages if isinstance(m.timestamp, str)]
        store.ensure_partitions(conn, [identity.parse_timestamp(t)[0] for t in stamps])
        run_id = store.start_run(conn, "acct-words")
        conn.execute("CHECKPOINT")
        with proc.CpuMeter(os.getpid(), pg_pid) as cpu:
            for page in pages:
                store.commit_block(conn, run_id, page)
        with proc.CpuMeter(os.getpid(), pg_pid) as vacuum:
            conn.execute("VACUUM (ANALYZE) sms_message")
        stored = int(conn.execute("SELECT count(*) FROM sms_message").fetchone()[0])  # type: ignore[index]
        index_bytes = int(
            conn.execute(
                "SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i"
                " WHERE coalesce(pg_partition_root(i.indexrelid), i.indexrelid)::text = %s",
                (migrations.WORD_SEARCH_INDEX,),
            ).fetchone()[0]  # type: ignore[index]
        )
        total = history_sizes.sizes(conn)["total"]
    pg.drop_database(admin, name)
    blocks = math.ceil(messages / BLOCK)
    return {
        "variant": variant,
        "blocks": blocks,
        "stored": stored,
        "pg_cpu_ms_per_block": cpu.spent.get("postgres", float("nan")) / blocks * 1000,
        "wall_ms_per_block": cpu.wall / blocks * 1000,
        "vacuum_pg_cpu_ms_per_block": vacuum.spent.get("postgres", float("nan")) / blocks * 1000,
        "index_bytes_per_message": index_bytes / max(1, stored),
        "bytes_per_message": total / max(1, stored),
    }


def render(runs: dict[str, list[dict[str, Any]]], started: str, command: str, load: list[float]) -> str:
    env = harness.environment()
    lines = [
        f"Run started {started} (`{command}`): {runs['plain'][0]['stored']:,} messages of the simulator's "
        f"traffic per database, blocks of 100, {len(runs['plain'])} repetitions (medians); CPU "
        f"{env.get('host_cpu')} x {env.get('cpus')}, 1-minute load average "
        f"{', '.join(f'{v:.2f}' for v in load)} (before, after).",
        "",
        "| measure | plain | word search | difference |",
        "|---|---|---|---|",
    ]
    rows = (
        ("Postgres CPU per block of 100 (insert)", "pg_cpu_ms_per_block", "ms", 2),
        ("wall per block of 100 (insert)", "wall_ms_per_block", "ms", 2),
        ("Postgres CPU of the VACUUM after the load, per block", "vacuum_pg_cpu_ms_per_block", "ms", 2),
        ("word-search index, bytes per message", "index_bytes_per_message", "bytes", 0),
        ("all history relations, bytes per message", "bytes_per_message", "bytes", 0),
    )
    for label, key, unit, digits in rows:
        plain = statistics.median(r[key] for r in runs["plain"])
        words = statistics.median(r[key] for r in runs["word search"])
        lines.append(
            f"| {label} | {plain:,.{digits}f} {unit} | {words:,.{digits}f} {unit} "
            f"| {words - plain:+,.{digits}f} {unit} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.word_search", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages per database (%(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (%(default)s)")
    harness.add_readme_option(parser)
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.word_search", *given])
    started = harness.now_utc()
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with pg.server(None) as admin:
        pg.ensure_template(admin)
        for rep in range(max(1, args.reps)):
            for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                t0 = time.perf_counter()
                out = _load(admin, variant, max(BLOCK, args.messages), seed=40 + rep)
                runs[variant].append(out)
                _log(
                    f"  {variant} rep {rep + 1}: {out['pg_cpu_ms_per_block']:.2f} ms CPU/block, "
                    f"index {out['index_bytes_per_message']:.0f} B/message ({time.perf_counter() - t0:.0f} s)"
                )
    load.append(os.getloadavg()[0])
    text = render(runs, started, command, load)
    harness.publish(
        text,
        {"runs": runs, "load": load, "command": command},
        harness.results_path("word-search-", started, False),
        _log,
        (README_BEGIN, README_END) if args.readme is not False else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
