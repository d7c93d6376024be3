"""The simulator's traffic as blocks of 100, their rows as the tree under test builds them, and the plan
of committing one.

Shared by the history-store measurements (``bench.history_measure``, ``bench.history_growth``) and
``bench.word_search``. ``sync_worker`` is imported inside each function: in a measurement's process
it resolves to the tree under test, and only the API both store versions share is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Final

import psycopg

BLOCK: Final = 100


def pages(account: str, n: int, seed: int, shape: str | None = None) -> Iterator[Any]:
    """The simulator's default traffic (or traffic of the named ``shape``, ``traffic.SHAPES``) for
    ``account`` as ``HistoryPage`` blocks of 100."""
    from sync_worker import models, simulator

    if shape is None:
        raw = simulator.seed_messages(n, seed=seed)
    else:
        raw = simulator.seed_messages(n, seed=seed, shape=simulator.traffic.SHAPES[shape])
    blocks = math.ceil(n / BLOCK)
    for b in range(blocks):
        last = b == blocks - 1
        yield models.HistoryPage(
            account_name=account,
            messages=tuple(models.SMSMessage.from_wire(m) for m in raw[b * BLOCK : (b + 1) * BLOCK]),
            has_more_data=not last,
            status=200 if last else 202,
            next=None if last else f"{account}-{b:07d}",
        )


def built(page_list: Sequence[Any]) -> list[list[Any]]:
    """Each block's rows as ``rows.build_rows`` makes them (what ``substitute.prebuilt_rows`` serves)."""
    from sync_worker import rows

    return [rows.build_rows(p.account_name, p.messages) for p in page_list]


def ensure_partitions(dsn: str, built: Sequence[Sequence[Any]]) -> bool:
    """v2 creates a month's partition the first time it sees the month; the daemon creates this
    month's and the next ahead of need. The simulator's traffic is dated 2024, so its partitions
    are created here, untimed, as the daemon would have. False for v1 (nothing to create)."""
    from sync_worker import store

    ensure = getattr(store, "ensure_partitions", None)
    if ensure is None:
        return False
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure(conn, [r.received_at for block in built for r in block])
    return True


def explain_block(conn: psycopg.Connection[Any], run_id: int, page: Any) -> str:
    """EXPLAIN ANALYZE of the ``commit_block`` statement for one fresh block, rolled back."""
    from sync_worker import queries, rows, store

    if hasattr(rows, "build_block"):
        # Issue 14 on: the statement's columns straight from the messages, arrays packed.
        from sync_worker import pgarrays

        pgarrays.register(conn.adapters)
        block = rows.build_block(page.account_name, page.messages)
        params = store._block_params(conn, page.account_name, block, run_id=run_id, next_token=page.next)
    else:
        built = rows.build_rows(page.account_name, page.messages)
        params = store._block_params(page.account_name, built, run_id=run_id, next_token=page.next)  # type: ignore[call-arg, arg-type]
    with conn.transaction(force_rollback=True):
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, WAL) " + queries.get("commit_block"), params
        ).fetchall()
    return "\n".join(str(r[0]) for r in plan)
