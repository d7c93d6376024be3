"""Retention: remove history older than a window, and old runs, without long locks or huge deletes.

Dated messages go a month at a time: a partition of ``sms_message`` (and its twin of
``sms_message_device``) whose whole range ends before the cutoff is dropped, which costs a
catalog change instead of a delete per row. Undated messages (no usable timestamp) are judged
by when they were stored and deleted in bounded batches, as are finished ``sync_run`` rows
(each account's newest run stays: ``status`` shows it). ``plan`` only reads; ``apply`` acts.
SQL lives in ``sql/queries/retention.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
from collections.abc import Callable
from typing import Any, Final

from psycopg import sql

from sync_worker import db, errors, queries

DEFAULT_BATCH: Final = 10_000
_PARTITION_RE: Final = re.compile(r"^sms_message(_device)?_p(\d{4})(\d{2})$")
_BEFORE_2000: Final = re.compile(r"^sms_message(_device)?_pbefore_2000$")
_EPOCH_2000: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Partition:
    name: str
    upper_bound: dt.datetime  # every row of the partition is older than this
    rows_estimate: int


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    cutoff: dt.datetime
    partitions: tuple[Partition, ...]
    undated_rows: int
    runs: int

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "partitions": [
                {"name": p.name, "before": p.upper_bound.isoformat(), "rows_estimate": p.rows_estimate}
                for p in self.partitions
            ],
            "undated_rows": self.undated_rows,
            "runs": self.runs,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    dropped: tuple[str, ...]
    busy: tuple[str, ...]  # partitions left for the next run: a lock wait was given up
    undated_deleted: int
    runs_deleted: int

    def as_dict(self) -> dict[str, object]:
        return {
            "dropped": list(self.dropped),
            "busy": list(self.busy),
            "undated_deleted": self.undated_deleted,
            "runs_deleted": self.runs_deleted,
        }


def cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)


def plan(conn: db.Connection, before: dt.datetime) -> Plan:
    """What ``apply`` would remove for the cutoff ``before``; reads only."""
    with db.transaction(conn) as cur:
        found = cur.execute(queries.get("retention_partitions")).fetchall()
        undated = cur.execute(queries.get("retention_count_undated"), {"cutoff": before}).fetchone()
        runs = cur.execute(queries.get("retention_count_runs"), {"cutoff": before}).fetchone()
    partitions = []
    for name, rows_estimate in found:
        upper = _upper_bound(str(name))
        if upper is not None and upper <= before:
            partitions.append(Partition(str(name), upper, int(rows_estimate)))
    return Plan(
        cutoff=before,
        partitions=tuple(partitions),
        undated_rows=int(undated[0]) if undated else 0,
        runs=int(runs[0]) if runs else 0,
    )


def apply(
    conn: db.Connection,
    todo: Plan,
    *,
    batch: int = DEFAULT_BATCH,
    stop_event: threading.Event | None = None,
) -> Result:
    """Remove what ``todo`` lists: partitions one by one, then batches of undated rows and runs.

    Each drop and each batch is its own short transaction, so a stop (or a crash) leaves a
    consistent database and the next run goes on where this one ended.
    """
    dropped: list[str] = []
    busy: list[str] = []
    for partition in todo.partitions:
        if stop_event is not None and stop_event.is_set():
            break
        try:
            with db.transaction(conn) as cur:
                # A long analyst query holds the parent: give up after a while instead of queueing
                # every writer behind this drop; the next run tries again.
                cur.execute("SET LOCAL lock_timeout = '5s'")
                ident = sql.Identifier(partition.name)  # a quoted identifier, never text
                cur.execute(sql.SQL(queries.get("retention_drop_partition")).format(name=ident))
        except errors.StoreError:
            busy.append(partition.name)
            continue
        dropped.append(partition.name)
    params = {"cutoff": todo.cutoff, "batch": batch}

    def undated_batch(cur: db.Cursor) -> Any:
        return cur.execute(queries.get("retention_delete_undated"), params).fetchone()

    def runs_batch(cur: db.Cursor) -> Any:
        return cur.execute(queries.get("retention_delete_runs"), params).fetchone()

    undated = _batches(conn, undated_batch, batch, stop_event)
    runs = _batches(conn, runs_batch, batch, stop_event)
    return Result(tuple(dropped), tuple(busy), undated, runs)


def _batches(
    conn: db.Connection,
    one_batch: Callable[[db.Cursor], Any],
    batch: int,
    stop_event: threading.Event | None,
) -> int:
    total = 0
    while stop_event is None or not stop_event.is_set():
        with db.transaction(conn) as cur:
            row = one_batch(cur)
        deleted = int(row[0]) if row else 0
        total += deleted
        if deleted < batch:
            break
    return total


def _upper_bound(name: str) -> dt.datetime | None:
    """The end of a partition's range, from its name (None: not a dated monthly partition)."""
    if _BEFORE_2000.match(name):
        return _EPOCH_2000
    match = _PARTITION_RE.match(name)
    if match is None:
        return None
    year, month = int(match.group(2)), int(match.group(3))
    return dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
