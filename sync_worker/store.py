"""The Postgres write path: rows, cursor and run counters, one transaction per block.

Every function takes a psycopg 3 ``Connection`` (autocommit or not, but not
inside an open transaction: each write function is exactly one transaction of
its own and refuses to become part of the caller's). SQL lives in
``sql/queries/store.sql``. psycopg's connection errors surface as
``errors.DatabaseUnavailableError``, every other database error as
``errors.StoreError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg
import psycopg.rows

from sync_worker import errors, models, queries, rows, secret

# Namespace of pg_advisory_lock(int, int) account locks; migrations use another.
ACCOUNT_LOCK_NAMESPACE: Final = 0x53_4D_53_41  # "SMSA"
_MAX_ERROR_TEXT: Final = 4000

Connection = psycopg.Connection[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class BlockResult:
    received: int
    inserted: int
    replays: int
    # (index in the block, problems) of every message that did not fit the model.
    malformed: tuple[tuple[int, tuple[str, ...]], ...]


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
class QuarantineResult:
    quarantine_id: int
    inserted: bool  # False: the same block was quarantined before (a replay); its row was updated


def get_cursor(conn: Connection, account: str) -> str | None:
    """The stored ``next`` token of ``account`` (None: start at the head of the queue)."""
    with _transaction(conn) as cur:
        row = cur.execute(queries.get("get_cursor"), {"account_name": account}).fetchone()
    return None if row is None else row[0]


def start_run(conn: Connection, account: str) -> int:
    """Open a ``sync_run`` row and return its id."""
    with _transaction(conn) as cur:
        row = cur.execute(
            queries.get("start_run"),
            {"account_name": account, "worker_host": socket.gethostname(), "worker_pid": os.getpid()},
        ).fetchone()
    assert row is not None
    return int(row[0])


def commit_block(conn: Connection, run_id: int, page: models.HistoryPage) -> BlockResult:
    """Store one block, move the cursor to ``page.next`` and count it, atomically.

    One statement, so one round trip and one transaction: either the rows, the
    cursor and the counters all land, or none of them does. Replayed messages
    hit ``ON CONFLICT DO NOTHING`` and count as replays.
    """
    built = rows.build_rows(page.account_name, page.messages)
    params = _block_params(built)
    malformed = tuple((i, r.problems) for i, r in enumerate(built) if r.problems)
    params.update(
        account_name=page.account_name,
        run_id=run_id,
        next_token=page.next,
        received=len(built),
        malformed=len(malformed),
    )
    with _transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("commit_block"), params, prepare=True).fetchone()
    assert row is not None
    inserted = int(row[0])
    return BlockResult(
        received=len(built), inserted=inserted, replays=len(built) - inserted, malformed=malformed
    )


def quarantine_block(
    conn: Connection, run_id: int, account: str, block: models.KeptBlock
) -> QuarantineResult:
    """Keep an unreadable block's body, move the cursor past it and count it, atomically.

    The cursor moves to ``block.next_token`` (NULL after a final 200), exactly as
    ``commit_block`` would have: the request that acknowledges the block is sent
    only after this transaction committed, so a crash in between replays the
    block, which maps onto the same ``sms_quarantine`` row.
    """
    params = {
        "account_name": account,
        "run_id": run_id,
        "http_status": block.http_status,
        "request_token": block.request_token,
        "next_token": block.next_token,
        "problem": _error_text(block.problem),
        "body": block.body,
        "body_size": block.body_size,
        "body_sha256": block.body_sha256,
        "received_at": block.received_at,
    }
    with _transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("quarantine_block"), params).fetchone()
    assert row is not None
    return QuarantineResult(quarantine_id=int(row[0]), inserted=bool(row[1]))


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


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayResult:
    quarantine_id: int
    account_name: str
    messages: int  # readable messages found in the kept bytes
    inserted: int  # of those, rows new to sms_history (the rest were stored already)
    resolved: bool
    problem: str | None  # why the block (or part of it) is still unreadable


def record_block_failure(
    conn: Connection,
    account: str,
    *,
    request_token: str | None,
    body_sha256: str,
    error_kind: str,
    error: str,
) -> int:
    """Count one more run failing to store the same block with the same error kind; return the streak."""
    with _transaction(conn) as cur:
        row = cur.execute(
            queries.get("record_block_failure"),
            {
                "account_name": account,
                "request_token": request_token,
                "body_sha256": body_sha256,
                "error_kind": error_kind,
                "error": _error_text(error),
            },
        ).fetchone()
    assert row is not None
    return int(row[0])


def clear_failure_streak(conn: Connection, account: str) -> None:
    with _transaction(conn) as cur:
        cur.execute(queries.get("clear_block_failure"), {"account_name": account})


def list_quarantine(
    conn: Connection, account: str | None = None, *, include_resolved: bool = False
) -> list[QuarantinedBlock]:
    with _transaction(conn) as cur:
        fetched = cur.execute(
            queries.get("quarantine_list"),
            {"account_name": account, "include_resolved": include_resolved},
        ).fetchall()
    return [_quarantined_block(r) for r in fetched]


def show_quarantine(conn: Connection, quarantine_id: int) -> tuple[QuarantinedBlock, dict[str, Any]] | None:
    """One block with its body, plus the details only ``show`` prints."""
    with _transaction(conn) as cur:
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


def unresolved_quarantine_ids(conn: Connection) -> list[int]:
    with _transaction(conn) as cur:
        return [int(r[0]) for r in cur.execute(queries.get("quarantine_unresolved_ids")).fetchall()]


def unresolved_quarantine_count(conn: Connection, account: str) -> int:
    with _transaction(conn) as cur:
        row = cur.execute(queries.get("quarantine_unresolved_count"), {"account_name": account}).fetchone()
    return 0 if row is None else int(row[0])


def replay_quarantined(
    conn: Connection,
    quarantine_id: int,
    read: Callable[[str, bytes, int], tuple[list[models.SMSMessage], str | None]],
) -> ReplayResult | None:
    """Re-read one kept block with ``read`` and store what it yields, in one transaction.

    ``read(account, body, body_size)`` returns the readable messages and a
    problem (None when the whole block was read). Rows use the same message key
    as a sync would, so a message already stored is absorbed. The block is
    resolved only when it was read whole. None: no such block.
    """
    with _transaction(conn) as cur:
        row = cur.execute(queries.get("quarantine_for_replay"), {"id": quarantine_id}).fetchone()
        if row is None:
            return None
        account, body, body_size = row[1], bytes(row[2]), int(row[3])
        messages, problem = read(account, body, body_size)
        built = rows.build_rows(account, messages)
        inserted = 0
        if built:
            params = _block_params(built)
            params["account_name"] = account
            counted = cur.execute(queries.get("replay_rows"), params).fetchone()
            assert counted is not None
            inserted = int(counted[0])
        resolved = problem is None
        cur.execute(
            queries.get("quarantine_mark_replayed"),
            {
                "id": quarantine_id,
                "messages": len(built),
                "inserted": inserted,
                "problem": _error_text(problem),
                "resolved": resolved,
            },
        )
    return ReplayResult(quarantine_id, account, len(built), inserted, resolved, problem)


def finish_run(conn: Connection, run_id: int, outcome: str, error: str | None) -> None:
    """Close a run; a successful outcome sets ``last_success_at``, an error ``last_error``.

    Both can happen at once: a run that drained its queue but quarantined a
    block succeeded, and its note (``error``) still reaches ``last_error``.
    """
    error_text = _error_text(error)
    with _transaction(conn) as cur:
        row = cur.execute(
            queries.get("finish_run"), {"run_id": run_id, "outcome": outcome, "error": error_text}
        ).fetchone()
        if row is None:
            raise errors.StoreError(f"sync_run {run_id} does not exist")
        account = row[0]
        if outcome == "succeeded":
            cur.execute(queries.get("cursor_success"), {"account_name": account})
        if error_text is not None:
            cur.execute(queries.get("cursor_error"), {"account_name": account, "error": error_text})


def clear_cursor(conn: Connection, account: str, reason: str) -> None:
    """Forget the stored token: the next run starts at the head of the queue."""
    with _transaction(conn) as cur:
        cur.execute(queries.get("clear_cursor"), {"account_name": account, "reason": _error_text(reason)})


def account_lock_key(account: str) -> int:
    """The signed 32-bit advisory-lock key of ``account``."""
    return int.from_bytes(hashlib.sha256(account.encode("utf-8")).digest()[:4], "big", signed=True)


def try_account_lock(conn: Connection, account: str) -> bool:
    """Take the session-level lock of ``account`` without waiting; False when another holds it."""
    with _transaction(conn) as cur:
        row = cur.execute(
            queries.get("try_account_lock"),
            {"namespace": ACCOUNT_LOCK_NAMESPACE, "key": account_lock_key(account)},
        ).fetchone()
    return bool(row is not None and row[0])


def release_account_lock(conn: Connection, account: str) -> None:
    with _transaction(conn) as cur:
        cur.execute(
            queries.get("release_account_lock"),
            {"namespace": ACCOUNT_LOCK_NAMESPACE, "key": account_lock_key(account)},
        )


@dataclasses.dataclass(frozen=True, slots=True)
class LockHolder:
    """The run holding an account's lock, as recorded in ``sync_run``."""

    host: str
    pid: int
    started_at: dt.datetime
    held_seconds: float

    def describe(self) -> str:
        return f"{self.host}:{self.pid} since {self.started_at.isoformat()} ({self.held_seconds:.0f} s)"


def lock_holder(conn: Connection, account: str) -> LockHolder | None:
    """Who holds ``account``'s lock (the newest unfinished run), or None when no run is recorded."""
    with _transaction(conn) as cur:
        row = cur.execute(queries.get("lock_holder"), {"account_name": account}).fetchone()
    return None if row is None else LockHolder(row[0], int(row[1]), row[2], float(row[3]))


def stored_raw_json(conn: Connection, account: str) -> list[str]:
    """The exact JSON of every message stored for ``account`` (what was received)."""
    with _transaction(conn) as cur:
        return [r[0] for r in cur.execute(queries.get("stored_raw_json"), {"account_name": account})]


def top_devices_on_busiest_day(conn: Connection) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The demo's analyst query (column names and rows): the five busiest devices of the busiest day."""
    with _transaction(conn) as cur:
        cur.execute(queries.get("demo_top_devices"))
        return [c.name for c in cur.description or ()], cur.fetchall()


def account_status(conn: Connection) -> list[AccountStatus]:
    """One line per known account, for ``sync-worker status``."""
    with _transaction(conn) as cur:
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


def _block_params(built: list[rows.Row]) -> dict[str, Any]:
    dev_key: list[str] = []
    dev_position: list[int] = []
    dev_kind: list[str] = []
    dev_id: list[str] = []
    for r in built:
        for position, (kind, ident) in enumerate(r.devices):
            dev_key.append(r.message_key)
            dev_position.append(position)
            dev_kind.append(kind)
            dev_id.append(ident)
    sep = rows.PROBLEM_SEPARATOR
    return {
        "message_key": [r.message_key for r in built],
        "occurrence": [r.occurrence for r in built],
        "device_ids": [r.device_ids_json for r in built],
        "device_kind": [r.device_kind for r in built],
        "device_id": [r.device_id for r in built],
        "device_count": [len(r.devices) for r in built],
        "message": [r.message for r in built],
        "received_at": [r.received_at for r in built],
        "timestamp_raw": [r.timestamp_raw for r in built],
        "raw_json": [r.raw_json for r in built],
        "raw_is_jsonb": [r.raw_is_jsonb for r in built],
        "problems": [sep.join(r.problems) for r in built],
        "dev_message_key": dev_key,
        "dev_position": dev_position,
        "dev_kind": dev_kind,
        "dev_id": dev_id,
    }


def _error_text(error: str | None) -> str | None:
    if error is None:
        return None
    # Stored errors are read by operators and dashboards: never a credential, never invalid text.
    text = rows.clean_text(secret.scrub(error))[0]
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


@contextmanager
def _transaction(
    conn: Connection, *, single_statement: bool = False
) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.closed:
        raise errors.StoreError(
            "store functions run their own transaction; the connection is already inside one"
        )
    try:
        if single_statement and conn.autocommit:
            # One statement in autocommit is already one atomic transaction; an
            # explicit BEGIN/COMMIT would add two round trips per block.
            with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
                yield cur
            return
        with conn.transaction(), conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
            yield cur
    except psycopg.OperationalError as exc:
        raise errors.DatabaseUnavailableError(f"database unavailable ({type(exc).__name__}: {exc})") from exc
    except psycopg.Error as exc:
        raise errors.StoreError(f"database error ({type(exc).__name__}: {exc})") from exc
