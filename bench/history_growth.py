"""The history-store growth measurement, run inside one variant's process (``bench.history_measure``):
a block's commit into a database already holding the big table (``bench.bulk_history``) against an
empty one.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psycopg

from bench import bulk_history, history_blocks, history_sizes, pg, substitute

# New traffic's account sorts between two bulk accounts: inserts land inside the key index, not at
# its right edge (which would be the cheapest possible case).
GROWTH_ACCOUNT_PREFIX: Final = "acct-07-grow-"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _forget_growth_rows(dsn: str) -> None:
    """Remove what earlier timed blocks added, so the kept table stays exactly as loaded."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A range on the key index's leading column, not a LIKE (no pattern index).
        bounds = (GROWTH_ACCOUNT_PREFIX, GROWTH_ACCOUNT_PREFIX[:-1] + ".")
        deleted = conn.execute(
            "DELETE FROM sms_message WHERE account_name >= %s AND account_name < %s", bounds
        ).rowcount
        conn.execute("DELETE FROM sms_message_device WHERE account_name >= %s AND account_name < %s", bounds)
        conn.execute("DELETE FROM sync_cursor WHERE account_name >= %s AND account_name < %s", bounds)
        conn.execute("DELETE FROM sync_run WHERE account_name >= %s AND account_name < %s", bounds)
        if deleted:
            conn.execute("VACUUM (ANALYZE) sms_message")
            conn.execute("CHECKPOINT")


def _wal_lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wal_bytes(conn: psycopg.Connection[Any], since: str) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (since,)).fetchone()
    return int(row[0]) if row else 0


def _paired_commits(
    dsns: dict[str, str], page_list: Sequence[Any], built: Sequence[Any]
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each block committed into every database back to back, the order alternating per block, so
    drift on a shared machine hits them alike. Per database: each block's wall time (ms) of
    ``store.commit_block`` over prebuilt rows, and the WAL its commits wrote (the server's insert
    position read between commits, untimed: the bench is the only writer)."""
    from sync_worker import store

    labels = list(dsns)
    for dsn in dsns.values():
        pg.checkpoint(dsn)
    times: dict[str, list[float]] = {label: [] for label in labels}
    wal = dict.fromkeys(labels, 0)
    with contextlib.ExitStack() as stack:
        conns = {
            label: stack.enter_context(psycopg.connect(dsns[label], autocommit=True)) for label in labels
        }
        runs = {label: store.start_run(conns[label], page_list[0].account_name) for label in labels}
        stack.enter_context(substitute.prebuilt_rows(list(page_list), list(built)))
        for i, page in enumerate(page_list):
            for label in labels if i % 2 == 0 else labels[::-1]:
                conn = conns[label]
                lsn = _wal_lsn(conn)
                t0 = time.perf_counter()
                store.commit_block(conn, runs[label], page)
                times[label].append((time.perf_counter() - t0) * 1000)
                wal[label] += _wal_bytes(conn, lsn)
    return times, wal


def _explain_probe(dsn: str, page: Any) -> str:
    from sync_worker import store

    history_blocks.ensure_partitions(dsn, history_blocks.built([page]))
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_id = store.start_run(conn, page.account_name)
        return history_blocks.explain_block(conn, run_id, page)


def task_growth(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-block commit time into a database holding ``rows`` messages vs an empty one."""
    n_rows, n_blocks, reps = int(spec["rows"]), int(spec["blocks"]), int(spec["reps"])
    with pg.server(Path(spec["data_dir"])) as admin:
        pg.ensure_template(admin)
        t = time.perf_counter()
        big_name, big_dsn, provenance = bulk_history.big_database(admin, n_rows)
        setup_seconds = time.perf_counter() - t
        _forget_growth_rows(big_dsn)
        with psycopg.connect(big_dsn, autocommit=True) as conn:
            present_row = conn.execute("SELECT count(*) FROM sms_message").fetchone()
            present = int(present_row[0]) if present_row else 0
            in_partition_row = conn.execute(
                "SELECT count(*) FROM sms_message"
                " WHERE received_at >= '2024-05-01' AND received_at < '2024-06-01'"
            ).fetchone()
            in_partition = int(in_partition_row[0]) if in_partition_row else 0
            big_sizes = history_sizes.sizes(conn)
        empty_dsn = pg.fresh_database(admin, "hs_growth_empty")
        empty: list[float] = []
        big: list[float] = []
        wal: dict[str, list[float]] = {"empty": [], "big": []}
        plans: dict[str, str] = {}
        try:
            for rep in range(reps):
                account = f"{GROWTH_ACCOUNT_PREFIX}{rep}"
                page_list = list(
                    history_blocks.pages(account, n_blocks * history_blocks.BLOCK, seed=700 + rep)
                )
                built = history_blocks.built(page_list)
                history_blocks.ensure_partitions(empty_dsn, built)
                history_blocks.ensure_partitions(big_dsn, built)
                dsns = (
                    {"empty": empty_dsn, "big": big_dsn}
                    if rep % 2 == 0
                    else {"big": big_dsn, "empty": empty_dsn}
                )
                times, wal_bytes = _paired_commits(dsns, page_list, built)
                empty.append(statistics.median(times["empty"]))
                big.append(statistics.median(times["big"]))
                for label in dsns:
                    wal[label].append(wal_bytes[label] / n_blocks)
                _log(f"    growth rep {rep + 1}: empty {empty[-1]:.3f} ms, {present:,} rows {big[-1]:.3f} ms")
            # Where a difference comes from: buffers read vs hit, WAL (full-page images after the
            # checkpoint), per node, for one more fresh block in each database.
            probe = next(
                history_blocks.pages(f"{GROWTH_ACCOUNT_PREFIX}explain", history_blocks.BLOCK, seed=799)
            )
            plans = {"empty": _explain_probe(empty_dsn, probe), "big": _explain_probe(big_dsn, probe)}
        finally:
            _forget_growth_rows(big_dsn)
            pg.drop_database(admin, "hs_growth_empty")
    return {
        "rows_present": present,
        "rows_in_written_partition": in_partition,
        "blocks": n_blocks,
        "empty_ms": empty,
        "big_ms": big,
        "ratio": [b / e for b, e in zip(big, empty, strict=True)],
        "wal_bytes_per_block": wal,
        "explain": plans,
        "database": big_name,
        "provenance": provenance,
        "setup_seconds": setup_seconds,
        "big_sizes": big_sizes,
    }
