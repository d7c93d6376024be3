"""What the tables say, for the people and commands that read them.

``status`` (per account: cursor, last success, lag, rows, last run, who is running it,
unresolved quarantined blocks), the quarantine listing, who holds an account's lock, and
the demo's reads. Read-only: every write lives in ``store``. Each function is one
transaction of its own (``db.transaction``); SQL in ``sql/queries/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sync_worker import db, queries


@dataclasses.dataclass(frozen=True, slots=True)
class AccountStatus:
    account_name: str
    cursor_present: bool
    moved_at: dt.datetime | None
    last_success_at: dt.datetime | None
    lag_seconds: float | None  # since the last successful run; None if there never was one
    row_count: int
    last_run_outcome: str | None
    last_error: str | None
    last_error_at: dt.datetime | None
    quarantined: int = 0  # unresolved blocks kept in sms_quarantine for this account
    # The process running (or last seen running) the account's newest run: host:pid, and since when.
    running_on: str | None = None
    running_since: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QuarantinedBlock:
    """One ``sms_quarantine`` row as ``quarantine list``/``show`` print it (``body`` only for ``show``)."""

    id: int
    account_name: str
    http_status: int
    problem: str
    body_size: int
    body_sha256: str
    first_stored_at: dt.datetime
    seen_count: int
    resolved_at: dt.datetime | None
    replayed_at: dt.datetime | None
    replay_messages: int | None
    replay_inserted: int | None
    replay_problem: str | None
    body: bytes | None = None


def list_quarantine(
    conn: db.Connection, account: str | None = None, *, include_resolved: bool = False
) -> list[QuarantinedBlock]:
    with db.transaction(conn) as cur:
        fetched = cur.execute(
            queries.get("quarantine_list"),
            {"account_name": account, "include_resolved": include_resolved},
        ).fetchall()
    return [_quarantined_block(r) for r in fetched]


def show_quarantine(
    conn: db.Connection, quarantine_id: int
) -> tuple[QuarantinedBlock, dict[str, Any]] | None:
    """One block with its body, plus the details only ``show`` prints."""
    with db.transaction(conn) as cur:
        r = cur.execute(queries.get("quarantine_show"), {"id": quarantine_id}).fetchone()
    if r is None:
        return None
    block = dataclasses.replace(_quarantined_block(r), body=bytes(r[18]))
    extra = {
        "run_id": r[13],
        "has_request_token": r[14],
        "has_next_token": r[15],
        "received_at": r[16],
        "last_seen_at": r[17],
    }
    return block, extra


def unresolved_quarantine_ids(conn: db.Connection) -> list[int]:
    with db.transaction(conn) as cur:
        return [int(r[0]) for r in cur.execute(queries.get("quarantine_unresolved_ids")).fetchall()]


@dataclasses.dataclass(frozen=True, slots=True)
class LockHolder:
    """The run holding an account's lock, as recorded in ``sync_run``."""

    host: str
    pid: int
    started_at: dt.datetime
    held_seconds: float

    def describe(self) -> str:
        return f"{self.host}:{self.pid} since {self.started_at.isoformat()} ({self.held_seconds:.0f} s)"


def lock_holder(conn: db.Connection, account: str) -> LockHolder | None:
    """Who holds ``account``'s lock (the newest unfinished run), or None when no run is recorded."""
    with db.transaction(conn) as cur:
        row = cur.execute(queries.get("lock_holder"), {"account_name": account}).fetchone()
    return None if row is None else LockHolder(row[0], int(row[1]), row[2], float(row[3]))


def stored_raw_json(conn: db.Connection, account: str) -> list[str]:
    """The exact JSON of every message stored for ``account`` (what was received)."""
    with db.transaction(conn) as cur:
        return [r[0] for r in cur.execute(queries.get("stored_raw_json"), {"account_name": account})]


def unknown_callbacks(conn: db.Connection, account: str | None = None) -> list[dict[str, Any]]:
    """Callbacks kept with a shape the receiver does not know (their messages are not in sms_history)."""
    with db.transaction(conn) as cur:
        found = cur.execute(queries.get("callback_unknown_list"), {"account_name": account})
        names = [c.name for c in found.description or ()]
        return [dict(zip(names, row, strict=True)) for row in found.fetchall()]


def history_source_counts(conn: db.Connection, account: str) -> dict[str, int]:
    """Rows of ``account`` per ``source`` (``poll``, ``push``)."""
    with db.transaction(conn) as cur:
        rows = cur.execute(queries.get("history_source_counts"), {"account_name": account}).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def top_devices_on_busiest_day(conn: db.Connection) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The demo's analyst query (column names and rows): the five busiest devices of the busiest day."""
    with db.transaction(conn) as cur:
        cur.execute(queries.get("demo_top_devices"))
        return [c.name for c in cur.description or ()], cur.fetchall()


def announce(
    conn: db.Connection, names: Sequence[str], configured: Callable[[str, float | None], None]
) -> None:
    """``configured(name, last_success)`` for each of ``names``, the last success (epoch seconds) as
    the database has it: how every account gets its freshness series from the first scrape and
    across restarts, with its real last success even before (or without) a successful run."""
    last = {
        s.account_name: s.last_success_at.timestamp()
        for s in account_status(conn)
        if s.last_success_at is not None
    }
    for name in names:
        configured(name, last.get(name))


def account_status(conn: db.Connection) -> list[AccountStatus]:
    """One line per known account, for ``sync-worker status``."""
    with db.transaction(conn) as cur:
        fetched = cur.execute(queries.get("account_status")).fetchall()
    return [
        AccountStatus(
            account_name=r[0],
            cursor_present=bool(r[1]),
            moved_at=r[2],
            last_success_at=r[3],
            lag_seconds=None if r[4] is None else float(r[4]),
            row_count=int(r[5]),
            last_run_outcome=r[6],
            last_error=r[7],
            last_error_at=r[8],
            quarantined=int(r[9]),
            running_on=r[10],
            running_since=r[11],
        )
        for r in fetched
    ]


def _quarantined_block(r: tuple[Any, ...]) -> QuarantinedBlock:
    return QuarantinedBlock(
        id=int(r[0]),
        account_name=r[1],
        http_status=int(r[2]),
        problem=r[3],
        body_size=int(r[4]),
        body_sha256=r[5],
        first_stored_at=r[6],
        seen_count=int(r[7]),
        resolved_at=r[8],
        replayed_at=r[9],
        replay_messages=r[10],
        replay_inserted=r[11],
        replay_problem=r[12],
    )
