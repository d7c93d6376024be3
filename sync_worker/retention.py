"""Retention: remove history older than a window, and old runs, without long locks or huge deletes.

A message goes only when its timestamp *and* the time it was first stored are older than the
window (``cutoff``): a message stamped 1970 by a broken clock and stored a minute ago stays for the
whole window, like any other. The unit is a *range*: a partition of ``sms_message`` and its twin of
``sms_message_device`` with the same bounds, read from the catalog (``pg_get_expr`` of the
partition bound), never from a name.

- A range whose upper bound is at or before the cutoff, none of whose rows was stored since the
  cutoff, is dropped: a catalog change instead of a delete per row. The check is made again under
  the lock that keeps writers out until the drop commits, so a row arriving meanwhile keeps it.
- Such a range with rows stored since the cutoff *waits* while it ended less than two windows ago:
  those rows are late deliveries of its month, and they age out within another window.
- One that ended earlier still but keeps receiving rows (a device clock set to 1970 feeds the
  before-2000 range forever) has its rows stored before the cutoff deleted in batches; the recent
  ones stay, and the range is dropped once none is recent.
- The DEFAULT range (messages without a usable timestamp) is never dropped: its rows stored before
  the cutoff go in batches. A range without an upper bound (from 2100) is never removed.
- Finished ``sync_run`` rows started before the cutoff go in batches (each account's newest stays).

Counts are exact (``count(*)``, never the planner's estimate): ``plan`` lists what ``apply``
removes, partition by partition. ``run`` plans and applies under an advisory lock, so replicas'
daily jobs and an operator's ``--apply`` never work at once. SQL lives in ``sql/queries/retention.sql``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from sync_worker import db, errors, queries

DEFAULT_BATCH: Final = 10_000
# pg_advisory_lock(int, int): the migrations' namespace ("SMSM"), whose key 1 is `migrate`'s.
LOCK_NAMESPACE: Final = 0x53_4D_53_4D
LOCK_KEY: Final = 2
_LOCK: Final = {"namespace": LOCK_NAMESPACE, "key": LOCK_KEY}
MESSAGE_TABLE: Final = "sms_message"
DEVICE_TABLE: Final = "sms_message_device"
# How long a drop waits for the history's lock (a long analyst query holds it) before leaving the
# range for the next run, instead of queueing every writer behind it.
_LOCK_TIMEOUT: Final = "SET LOCAL lock_timeout = '5s'"


@dataclasses.dataclass(frozen=True, slots=True)
class Partition:
    schema: str
    name: str
    parent: str
    is_default: bool
    lower: dt.datetime | None  # None: MINVALUE (or the DEFAULT partition)
    upper: dt.datetime | None  # None: MAXVALUE (or the DEFAULT partition)
    rows: int = 0  # count(*)
    recent: int = 0  # rows stored at or after the cutoff

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def old(self) -> int:
        return self.rows - self.recent


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """A partition of sms_message and its twin of sms_message_device (same bounds); either may be missing."""

    message: Partition | None
    device: Partition | None

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return tuple(p for p in (self.message, self.device) if p is not None)

    @property
    def upper(self) -> dt.datetime | None:
        return self.partitions[0].upper

    @property
    def is_default(self) -> bool:
        return self.partitions[0].is_default

    @property
    def recent(self) -> int:
        return sum(p.recent for p in self.partitions)

    @property
    def old(self) -> int:
        return sum(p.old for p in self.partitions)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    cutoff: dt.datetime
    drop: tuple[Range, ...]
    delete: tuple[Range, ...]
    wait: tuple[Range, ...]
    runs: int

    @property
    def messages(self) -> int:
        """Rows of sms_history this plan removes."""
        dropped = sum(r.message.rows for r in self.drop if r.message is not None)
        return dropped + sum(r.message.old for r in self.delete if r.message is not None)

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "drop": [
                {"partition": p.name, **_bounds(p), "rows": p.rows} for r in self.drop for p in r.partitions
            ],
            "delete": [{"partition": p.name, "rows": p.old} for r in self.delete for p in r.partitions],
            "wait": [
                {"partition": p.name, **_bounds(p), "rows": p.rows, "stored_since_cutoff": p.recent}
                for r in self.wait
                for p in r.partitions
            ],
            "messages": self.messages,
            "runs": self.runs,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    dropped: tuple[tuple[str, int], ...]  # (partition, rows)
    deleted: tuple[tuple[str, int], ...]  # (partition, rows), one entry per partition worked on
    busy: tuple[str, ...]  # partitions left for the next run: the lock wait was given up
    kept: tuple[str, ...]  # partitions the plan would drop, kept: a row was stored since the plan
    messages_removed: int
    runs_deleted: int

    def as_dict(self) -> dict[str, object]:
        return {
            "dropped": [{"partition": name, "rows": rows} for name, rows in self.dropped],
            "deleted": [{"partition": name, "rows": rows} for name, rows in self.deleted],
            "busy": list(self.busy),
            "kept": list(self.kept),
            "messages_removed": self.messages_removed,
            "runs_deleted": self.runs_deleted,
        }


def cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)


def plan(conn: db.Connection, days: int, *, now: dt.datetime | None = None) -> Plan:
    """What ``apply`` would remove with a window of ``days``; reads only.

    Counts every range that ended before the cutoff, and the DEFAULT range: one pass over each
    (exact counts cost a pass; the ranges still receiving rows are not read at all).
    """
    before = cutoff(days, now)
    waits_until = before - dt.timedelta(days=days)
    drop: list[Range] = []
    delete: list[Range] = []
    wait: list[Range] = []
    with db.transaction(conn) as cur:
        for found in _ranges(cur):
            if not found.is_default and (found.upper is None or found.upper > before):
                continue  # still current, or open-ended (from 2100): never removed
            counted = Range(*(_counted(cur, p, before) for p in (found.message, found.device)))
            if counted.is_default:
                if counted.old:
                    delete.append(counted)
            elif not counted.recent:
                drop.append(counted)
            elif counted.upper is not None and counted.upper > waits_until:
                wait.append(counted)
            elif counted.old:
                delete.append(counted)
        runs = cur.execute(queries.get("retention_count_runs"), {"cutoff": before}).fetchone()
    return Plan(before, tuple(drop), tuple(delete), tuple(wait), int(runs[0]) if runs else 0)


def run(
    conn: db.Connection,
    days: int,
    *,
    batch: int = DEFAULT_BATCH,
    stop_event: threading.Event | None = None,
    now: dt.datetime | None = None,
) -> tuple[Plan, Result] | None:
    """Plan and apply, holding the retention lock; None when another process holds it (nothing done)."""
    with db.transaction(conn) as cur:
        row = cur.execute(queries.get("retention_try_lock"), _LOCK).fetchone()
    if not (row and row[0]):
        return None
    try:
        todo = plan(conn, days, now=now)
        return todo, apply(conn, todo, batch=batch, stop_event=stop_event)
    finally:
        # A lost connection took its session, and the lock with it; its error is already on its way.
        with contextlib.suppress(errors.DatabaseUnavailableError), db.transaction(conn) as cur:
            cur.execute(queries.get("retention_unlock"), _LOCK)


def apply(
    conn: db.Connection,
    todo: Plan,
    *,
    batch: int = DEFAULT_BATCH,
    stop_event: threading.Event | None = None,
) -> Result:
    """Remove what ``todo`` lists: ranges dropped one by one, then batches of old rows and runs.

    Each drop and each batch is its own short transaction, so a stop (or a crash) leaves a
    consistent database and the next run goes on where this one ended.
    """

    def stopped() -> bool:
        return stop_event is not None and stop_event.is_set()

    dropped: list[tuple[str, int]] = []
    busy: list[str] = []
    kept: list[str] = []
    for found in todo.drop:
        if stopped():
            break
        outcome = _drop(conn, found, todo.cutoff)
        names = [p.name for p in found.partitions]
        if outcome == "dropped":
            dropped.extend((p.name, p.rows) for p in found.partitions)
        else:
            (busy if outcome == "busy" else kept).extend(names)
    deleted: list[tuple[str, int]] = []
    for found in todo.delete:
        if stopped():
            break
        deleted.extend(_delete(conn, found, todo.cutoff, batch, stopped))
    params = {"cutoff": todo.cutoff, "batch": batch}

    def runs_batch(cur: db.Cursor) -> int:
        row = cur.execute(queries.get("retention_delete_runs"), params).fetchone()
        return int(row[0]) if row else 0

    runs = _batches(conn, runs_batch, batch, stopped)
    messages = {r.message.name for r in (*todo.drop, *todo.delete) if r.message is not None}
    removed = sum(rows for name, rows in (*dropped, *deleted) if name in messages)
    return Result(tuple(dropped), tuple(deleted), tuple(busy), tuple(kept), removed, runs)


class _RowStoredSincePlan(Exception):
    """Raised inside a drop's transaction to roll it back: the range is no longer old enough."""


def _drop(conn: db.Connection, found: Range, before: dt.datetime) -> str:
    try:
        with db.transaction(conn) as cur:
            cur.execute(_LOCK_TIMEOUT)
            cur.execute(queries.get("retention_lock_history"))
            # Writers are kept out from here to the commit: a row they stored after the plan's count
            # shows up now (an index probe, 0010), and keeps the range.
            for p in found.partitions:
                row = cur.execute(
                    _composed("retention_stored_since", partition=p.ident), {"cutoff": before}
                ).fetchone()
                if row is None or row[0]:
                    raise _RowStoredSincePlan(p.name)
            for p in found.partitions:
                cur.execute(_composed("retention_drop_partition", partition=p.ident))
    except _RowStoredSincePlan:
        return "kept"
    except errors.StoreError as exc:
        if isinstance(exc.__cause__, (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)):
            return "busy"
        raise
    return "dropped"


def _delete(
    conn: db.Connection, found: Range, before: dt.datetime, batch: int, stopped: Callable[[], bool]
) -> list[tuple[str, int]]:
    """Delete the range's rows stored before the cutoff, in batches; (partition, rows) for each."""
    params = {"cutoff": before, "batch": batch}
    done: list[tuple[str, int]] = []
    message, device = found.message, found.device
    devices_with_messages = 0
    if message is not None:
        if device is not None:
            paired = _composed("retention_delete_batch", message=message.ident, device=device.ident)

            def with_devices(cur: db.Cursor) -> int:
                nonlocal devices_with_messages
                row = cur.execute(paired, params).fetchone()
                gone, extra = (int(row[0]), int(row[1])) if row else (0, 0)
                devices_with_messages += extra
                return gone

            done.append((message.name, _batches(conn, with_devices, batch, stopped)))
        else:
            done.append((message.name, _alone(conn, message, params, batch, stopped)))
    if device is not None:
        # Device rows go with their message above; a device row without one (never written by the
        # worker) would go here, by its own first_stored_at.
        done.append((device.name, devices_with_messages + _alone(conn, device, params, batch, stopped)))
    return done


def _alone(
    conn: db.Connection, p: Partition, params: dict[str, Any], batch: int, stopped: Callable[[], bool]
) -> int:
    query = _composed("retention_delete_batch_alone", partition=p.ident)

    def one(cur: db.Cursor) -> int:
        row = cur.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    return _batches(conn, one, batch, stopped)


def _batches(
    conn: db.Connection, one_batch: Callable[[db.Cursor], int], batch: int, stopped: Callable[[], bool]
) -> int:
    total = 0
    while not stopped():
        with db.transaction(conn) as cur:
            deleted = one_batch(cur)
        total += deleted
        if deleted < batch:
            break
    return total


def _ranges(cur: db.Cursor) -> list[Range]:
    """The partitions of both history tables, paired by their bounds."""
    by_bound: dict[str, dict[str, Partition]] = {}
    for parent, schema, name, is_default, lower, upper, bound in cur.execute(
        queries.get("retention_partitions")
    ).fetchall():
        found = Partition(str(schema), str(name), str(parent), bool(is_default), lower, upper)
        by_bound.setdefault(str(bound), {})[found.parent] = found
    return [Range(pair.get(MESSAGE_TABLE), pair.get(DEVICE_TABLE)) for pair in by_bound.values()]


def _counted(cur: db.Cursor, p: Partition | None, before: dt.datetime) -> Partition | None:
    if p is None:
        return None
    row = cur.execute(
        _composed("retention_count_partition", partition=p.ident), {"cutoff": before}
    ).fetchone()
    rows, recent = (int(row[0]), int(row[1])) if row else (0, 0)
    return dataclasses.replace(p, rows=rows, recent=recent)


def _composed(name: LiteralString, **identifiers: sql.Identifier) -> sql.Composed:
    """A named query with partition names composed in as quoted identifiers (never as text)."""
    return sql.SQL(queries.get(name)).format(**identifiers)


def _bounds(p: Partition) -> dict[str, str | None]:
    return {
        "from": p.lower.astimezone(dt.UTC).isoformat() if p.lower else None,
        "to": p.upper.astimezone(dt.UTC).isoformat() if p.upper else None,
    }
