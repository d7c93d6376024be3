"""The Postgres write path: rows, cursor and run counters, one transaction per block.

Every function takes a psycopg 3 ``Connection`` (autocommit or not, but not inside an open transaction:
each write function is exactly one transaction of its own and refuses to become part of the caller's);
``PostgresStore`` is the sync's ``sync.Store`` over them. SQL lives in ``sql/queries/store.sql``.
Driver connection errors surface as ``errors.DatabaseUnavailableError``, any other as ``errors.StoreError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import os
import socket
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import psycopg
import psycopg.errors
import psycopg.rows

from sync_worker import db, errors, gate, identity, models, pgarrays, queries, rows, secret, status

# Namespace of pg_advisory_lock(int, int) account locks; migrations use another.
ACCOUNT_LOCK_NAMESPACE: Final = 0x53_4D_53_41  # "SMSA"
_MAX_ERROR_TEXT: Final = 4000
_SOURCES: Final = frozenset({"poll", "push"})
# The CHECKs that keep dated rows out of the undated partitions (migration 0006).
_UNDATED_ONLY: Final = frozenset({"sms_message_undated_only", "sms_message_device_undated_only"})

Connection = psycopg.Connection[Any]

# Connections whose adapters already send pgarrays' packed arrays. Registered once per connection
# (a pooled one writes many blocks), not on each block's cursor, where it copied psycopg's dumper
# maps every time (~9 us a block). Weak: a closed, dropped connection leaves the set by itself.
_PACKED_READY: Final[weakref.WeakSet[Connection]] = weakref.WeakSet()


def packed_arrays(conn: Connection) -> None:
    """Make ``conn`` send pgarrays' packed arrays, once per connection (before its cursors exist:
    a cursor copies its connection's adapters when it is made)."""
    if conn not in _PACKED_READY:
        pgarrays.register(conn.adapters)
        _PACKED_READY.add(conn)


@dataclasses.dataclass(frozen=True, slots=True)
class BlockResult:
    received: int
    inserted: int
    replays: int
    # (index in the block, problems) of every message that did not fit the model.
    malformed: tuple[tuple[int, tuple[str, ...]], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class QuarantineResult:
    quarantine_id: int
    inserted: bool  # False: the same block was quarantined before (a replay); its row was updated


def get_cursor(conn: Connection, account: str) -> str | None:
    """The stored ``next`` token of ``account`` (None: start at the head of the queue)."""
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("get_cursor"), {"account_name": account}).fetchone()
    return None if row is None else row[0]


def start_run(conn: Connection, account: str) -> int:
    """Open a ``sync_run`` row and return its id."""
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("start_run"), _run_params(account)).fetchone()
    assert row is not None  # noqa: S101  # for mypy: RETURNING always yields a row
    return int(row[0])


@dataclasses.dataclass(frozen=True, slots=True)
class RunStart:
    """What ``begin_run`` found: the run's id and the stored cursor, or None when another holds the lock.

    ``abandoned``: earlier runs of the account it found still open and closed (their worker died).
    """

    run_id: int
    cursor: str | None
    abandoned: int = 0


def begin_run(conn: Connection, account: str) -> RunStart | None:
    """Take ``account``'s advisory lock, close its abandoned runs, open its run and read its cursor,
    in one round trip.

    None when another session holds the lock (no run row is made). The lock is session-level,
    like ``try_account_lock``'s: closing the connection, ``release_account_lock`` or a
    ``db.Pool`` taking the connection back releases it. The cursor is read by a statement of its
    own after the lock was taken (pipelined, so no extra round trip): the lock's own statement
    took its snapshot before the lock was taken, and that snapshot could predate the previous
    holder's last committed block.
    """
    with (
        db.transaction(conn, single_statement=True) as cur,
        conn.cursor(row_factory=psycopg.rows.tuple_row) as after,
    ):
        with db.pipeline(conn):
            cur.execute(
                queries.get("begin_run"),
                {
                    **_run_params(account),
                    "namespace": ACCOUNT_LOCK_NAMESPACE,
                    "key": account_lock_key(account),
                },
            )
            after.execute(queries.get("get_cursor"), {"account_name": account})
        row = cur.fetchone()
        cursor = after.fetchone()
    assert row is not None  # noqa: S101  # for mypy: the lock's row is always there
    if not row[0]:
        return None
    return RunStart(run_id=int(row[1]), cursor=None if cursor is None else cursor[0], abandoned=int(row[2]))


def _run_params(account: str) -> dict[str, Any]:
    return {"account_name": account, "worker_host": socket.gethostname(), "worker_pid": os.getpid()}


def commit_block(
    conn: Connection, run_id: int, page: models.HistoryPage, *, source: str = "poll"
) -> BlockResult:
    """Store one block, move the cursor to ``page.next`` and count it, atomically.

    One statement, so one round trip and one transaction: either the rows, the
    cursor and the counters all land, or none of them does. Replayed messages
    hit ``ON CONFLICT DO NOTHING`` and count as replays. ``source`` marks new rows
    (``poll`` or ``push``; a row keeps the source of its first copy).
    """
    block = rows.build_block(page.account_name, page.messages)
    params = _block_params(conn, page.account_name, block, run_id=run_id, next_token=page.next, source=source)
    try:
        inserted = _write_block(conn, params)
    except errors.StoreError as exc:
        if not _lacks_partition(exc):
            raise
        # A month seen for the first time: create its partition, then write the block again
        # (the failed statement changed nothing).
        ensure_partitions(conn, block.received_at)
        inserted = _write_block(conn, params)
    if page.ticket is not None:
        # Committed: every message the body listed is in this transaction, so the gate may let
        # the request that acknowledges the block go out.
        page.ticket.committed(len(block))
    return BlockResult(
        received=len(block), inserted=inserted, replays=len(block) - inserted, malformed=block.malformed
    )


def _write_block(conn: Connection, params: dict[str, Any]) -> int:
    packed_arrays(conn)
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("commit_block"), params, prepare=True).fetchone()
    assert row is not None  # noqa: S101  # for mypy: an aggregate always yields a row
    return int(row[0])


def _lacks_partition(exc: errors.StoreError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, psycopg.errors.CheckViolation) and cause.diag.constraint_name in _UNDATED_ONLY


def ensure_partitions(conn: Connection, times: Iterable[dt.datetime | None]) -> None:
    """Create the history partitions that rows received at ``times`` need (one per UTC month).

    The daemon calls it ahead of need for this month and the next, so the write path meets a
    missing partition only for messages dated elsewhere (a device clock off, a late backlog).
    """
    with db.transaction(conn) as cur:
        ensure_partitions_in(cur, times)


def ensure_partitions_in(cur: db.Cursor, times: Iterable[dt.datetime | None]) -> None:
    # One call per UTC month: the function itself takes any instant of the month.
    months = sorted({t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in times if t})
    if months:
        cur.execute(queries.get("ensure_partitions"), {"times": months})


def quarantine_block(
    conn: Connection,
    run_id: int,
    account: str,
    block: models.KeptBlock,
    ticket: gate.Ticket | None = None,
) -> QuarantineResult:
    """Keep an unreadable block's body, move the cursor past it and count it, atomically.

    The cursor moves to ``block.next_token`` (NULL after a final 200), exactly as
    ``commit_block`` would have: the request that acknowledges the block is sent
    only after this transaction committed (``ticket`` is settled here, for
    ``gate.release``), so a crash in between replays the block, which maps onto
    the same ``sms_quarantine`` row.
    """
    params = {
        "account_name": account,
        "run_id": run_id,
        "http_status": block.http_status,
        "request_token": block.request_token,
        "next_token": block.next_token,
        "problem": error_text(block.problem),
        "body": block.body,
        "body_size": block.body_size,
        "body_sha256": block.body_sha256,
        "received_at": block.received_at,
    }
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(queries.get("quarantine_block"), params).fetchone()
    assert row is not None  # noqa: S101  # for mypy: RETURNING always yields a row
    if ticket is not None:
        ticket.quarantined()
    return QuarantineResult(quarantine_id=int(row[0]), inserted=bool(row[1]))


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
    with db.transaction(conn) as cur:
        row = cur.execute(
            queries.get("record_block_failure"),
            {
                "account_name": account,
                "request_token": request_token,
                "body_sha256": body_sha256,
                "error_kind": error_kind,
                "error": error_text(error),
            },
        ).fetchone()
    assert row is not None  # noqa: S101  # for mypy: RETURNING always yields a row
    return int(row[0])


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
    with db.transaction(conn) as cur:
        row = cur.execute(queries.get("quarantine_for_replay"), {"id": quarantine_id}).fetchone()
        if row is None:
            return None
        account, body, body_size = row[1], bytes(row[2]), int(row[3])
        messages, problem = read(account, body, body_size)
        built = rows.build_rows(account, messages)
        inserted = _rows_only(cur, account, built, source="poll")
        resolved = problem is None
        cur.execute(
            queries.get("quarantine_mark_replayed"),
            {
                "id": quarantine_id,
                "messages": len(built),
                "inserted": inserted,
                "problem": error_text(problem),
                "resolved": resolved,
            },
        )
    return ReplayResult(quarantine_id, account, len(built), inserted, resolved, problem)


def _rows_only(cur: db.Cursor, account: str, built: list[rows.Row], *, source: str) -> int:
    """Rows through the sync's own statement inside the caller's transaction, without a cursor move
    or a run: the same rows and keys as a sync. Returns the rows new to the history."""
    if not built:
        return 0
    # The partitions come first: a failed statement would end the caller's transaction.
    ensure_partitions_in(cur, (r.received_at for r in built))
    pgarrays.register(cur.adapters)
    return int(rows_statement(cur, account, built, source=source)[0])


def rows_statement(
    cur: db.Cursor, account: str, built: list[rows.Row], *, source: str, inserted_keys: bool = False
) -> tuple[Any, ...]:
    """``commit_block``'s one row for ``built``, without a cursor move or a run."""
    block = rows.Block.from_rows(built)
    params = _block_params(
        cur.connection,
        account,
        block,
        run_id=None,
        next_token=None,
        move_cursor=False,
        source=source,
        inserted_keys=inserted_keys,
    )
    row = cur.execute(queries.get("commit_block"), params).fetchone()
    assert row is not None  # noqa: S101  # for mypy: an aggregate always yields a row
    return tuple(row)


def finish_run(
    conn: Connection,
    run_id: int,
    outcome: str,
    error: str | None,
    *,
    clear_failure_streak: bool = False,
) -> None:
    """Close a run; a successful outcome sets ``last_success_at``, an error ``last_error``.

    Both can happen at once: a run that drained its queue but quarantined a
    block succeeded, and its note (``error``) still reaches ``last_error``.
    ``clear_failure_streak`` also ends the account's failure streak (what a
    succeeded run does). One statement, so one round trip.
    """
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(
            queries.get("finish_run"),
            {
                "run_id": run_id,
                "outcome": outcome,
                "error": error_text(error),
                "succeeded": outcome == "succeeded",
                "clear_failure_streak": clear_failure_streak,
            },
        ).fetchone()
    if row is None:
        raise errors.StoreError(f"sync_run {run_id} does not exist")


def clear_cursor(conn: Connection, account: str, reason: str) -> None:
    """Forget the stored token: the next run starts at the head of the queue."""
    with db.transaction(conn, single_statement=True) as cur:
        cur.execute(queries.get("clear_cursor"), {"account_name": account, "reason": error_text(reason)})


def account_lock_key(account: str) -> int:
    """The signed 32-bit advisory-lock key of ``account``."""
    return int.from_bytes(hashlib.sha256(account.encode("utf-8")).digest()[:4], "big", signed=True)


def try_account_lock(conn: Connection, account: str) -> bool:
    """Take the session-level lock of ``account`` without waiting; False when another holds it."""
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(
            queries.get("try_account_lock"),
            {"namespace": ACCOUNT_LOCK_NAMESPACE, "key": account_lock_key(account)},
        ).fetchone()
    return bool(row is not None and row[0])


def release_account_lock(conn: Connection, account: str) -> None:
    with db.transaction(conn, single_statement=True) as cur:
        cur.execute(
            queries.get("release_account_lock"),
            {"namespace": ACCOUNT_LOCK_NAMESPACE, "key": account_lock_key(account)},
        )


def _block_params(
    conn: Connection,
    account: str,
    block: rows.Block,
    *,
    run_id: int | None,
    next_token: str | None,
    move_cursor: bool = True,
    source: str = "poll",
    inserted_keys: bool = False,
) -> dict[str, Any]:
    if source not in _SOURCES:
        raise errors.StoreError(f"a history row's source is 'poll' or 'push', not {source!r}")
    # Arrays go packed in their binary form (pgarrays): psycopg's own list dumping cost more
    # client CPU than the rest of the write. Text is sent in the connection's encoding.
    encoding = conn.info.encoding
    return {
        "account_name": account,
        "run_id": run_id,
        "next_token": next_token,
        "move_cursor": move_cursor,
        "source": source,
        "inserted_keys": inserted_keys,
        "received": len(block),
        "malformed": len(block.problems) - block.problems.count(None),
        "message_key": pgarrays.bytea(block.message_key),
        "occurrence": pgarrays.int4(block.occurrence),
        "device_kind": pgarrays.text(block.device_kind, encoding),
        "device_id": pgarrays.text(block.device_id, encoding),
        "device_count": pgarrays.int4(block.device_count),
        "message": pgarrays.text(block.message, encoding),
        "received_at": pgarrays.timestamptz(block.received_at),
        "timestamp_raw": pgarrays.text(block.timestamp_raw, encoding),
        "raw_kept": pgarrays.text(block.raw_kept, encoding),
        "raw_devices": pgarrays.text(block.raw_devices, encoding),
        "message_json": pgarrays.text(block.message_json, encoding),
        "device2_kind": pgarrays.text(block.device2_kind, encoding),
        "device2_id": pgarrays.text(block.device2_id, encoding),
        "device3_kind": pgarrays.text(block.device3_kind, encoding),
        "device3_id": pgarrays.text(block.device3_id, encoding),
        "raw_is_jsonb": pgarrays.boolean(block.raw_is_jsonb),
        "problems": pgarrays.text(block.problems, encoding),
        "dev_message_key": pgarrays.bytea(block.dev_message_key),
        "dev_position": pgarrays.int4(block.dev_position),
        "dev_kind": pgarrays.text(block.dev_kind, encoding),
        "dev_id": pgarrays.text(block.dev_id, encoding),
    }


def error_text(error: str | None) -> str | None:
    if error is None:
        return None
    # Stored errors are read by operators and dashboards: never a credential, never invalid text.
    text = identity.clean_text(secret.scrub(error))[0]
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


class PostgresStore:
    """``sync.Store`` over Postgres: one connection per account run, the functions above on it."""

    def __init__(self, connect: db.ConnectionFactory) -> None:
        self.connect = connect

    @contextlib.contextmanager
    def begin_run(self, account: str) -> Iterator[PostgresSession]:
        # On a connection of its own, retried once on a fresh one when a kept one fails (died idle).
        with db.started(self.connect, functools.partial(begin_run, account=account)) as (conn, start):
            yield PostgresSession(self.connect, conn, account, start)

    def ensure_partitions(self, times: Sequence[dt.datetime]) -> None:
        with db.session(self.connect) as conn:
            ensure_partitions(conn, times)


class PostgresSession:
    """``sync.Session``: one account run on one connection (the lock and the writes go together)."""

    def __init__(
        self, connect: db.ConnectionFactory, conn: Connection, account: str, start: RunStart | None
    ) -> None:
        self._connect, self._conn, self._account, self.start = connect, conn, account, start
        # The connection met DatabaseUnavailableError: it is gone, finish_run needs another one.
        self._lost = False

    @contextlib.contextmanager
    def _watched(self) -> Iterator[Connection]:
        try:
            yield self._conn
        except errors.DatabaseUnavailableError:
            self._lost = True
            raise

    def _run_id(self) -> int:
        if self.start is None:
            raise errors.StoreError(f"no run of {self._account} was begun: another process holds it")
        return self.start.run_id

    def lock_holder(self) -> status.LockHolder | None:
        with self._watched() as conn:
            return status.lock_holder(conn, self._account)

    def commit_block(self, page: models.HistoryPage) -> BlockResult:
        with self._watched() as conn:
            return commit_block(conn, self._run_id(), page)

    def quarantine_block(self, block: models.KeptBlock, ticket: gate.Ticket | None) -> QuarantineResult:
        with self._watched() as conn:
            return quarantine_block(conn, self._run_id(), self._account, block, ticket)

    def record_block_failure(
        self, *, request_token: str | None, body_sha256: str, error_kind: str, error: str
    ) -> int:
        with self._watched() as conn:
            return record_block_failure(
                conn,
                self._account,
                request_token=request_token,
                body_sha256=body_sha256,
                error_kind=error_kind,
                error=error,
            )

    def clear_cursor(self, reason: str) -> None:
        with self._watched() as conn:
            clear_cursor(conn, self._account, reason)

    def finish_run(self, outcome: str, error: str | None, *, clear_failure_streak: bool) -> None:
        # A lost connection is gone: a fresh one (if the database is back) keeps `status` from showing
        # the run as still going.
        with self._connect() if self._lost else contextlib.nullcontext(self._conn) as conn:
            finish_run(conn, self._run_id(), outcome, error, clear_failure_streak=clear_failure_streak)
