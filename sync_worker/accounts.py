"""The accounts the database knows, and forgetting one.

An account becomes known to the database with its first run, cursor or quarantined
block; nothing else ever removes it, so a mistyped name given to ``cursor reset``
would show in ``status`` forever. Commands check names against this list (and the
configured accounts) first, and ``forget`` is the one way an operator removes an
account's state. SQL in ``sql/queries/accounts.sql``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator

from sync_worker import claims, db, errors, queries, store


@dataclasses.dataclass(frozen=True, slots=True)
class KnownAccount:
    account_name: str
    cursor_present: bool
    last_success_at: dt.datetime | None
    last_run_at: dt.datetime | None
    runs: int


@dataclasses.dataclass(frozen=True, slots=True)
class Forgotten:
    """What ``forget`` removed (rows per table)."""

    account_name: str
    cursors: int
    runs: int
    failure_streaks: int
    history: int  # sms_history rows; 0 unless the data was asked for
    quarantined: int  # sms_quarantine rows; 0 unless the data was asked for


def known(conn: db.Connection) -> list[KnownAccount]:
    """Every account the database holds state for, by name."""
    with db.transaction(conn) as cur:
        fetched = cur.execute(queries.get("accounts_known")).fetchall()
    return [KnownAccount(r[0], bool(r[1]), r[2], r[3], int(r[4])) for r in fetched]


def is_known(conn: db.Connection, account: str) -> bool:
    with db.transaction(conn) as cur:
        row = cur.execute(queries.get("account_is_known"), {"account_name": account}).fetchone()
    return bool(row is not None and row[0])


def forget(
    conn: db.Connection, account: str, *, data: bool = False, even_if_served: bool = False
) -> Forgotten:
    """Remove ``account``'s cursor, runs, failure streak and schedule row (with ``data``: its
    history and quarantined blocks too), in one transaction, while holding the account's run lock.

    Raises ``errors.ValidationError`` while a run of the account holds its lock (forgetting under a
    running sync would let it write the cursor back), and, unless ``even_if_served``, while a
    daemon replica serves the account (``claims.served_by``): the operator's shell may lack the
    configuration the replicas run with. Forgotten anyway, a served account is registered again
    by its replicas within a third of their lease and synced from the head of its queue.
    """
    with _account_locked(conn, account, "accounts forget"):
        if not even_if_served:
            # Not atomic with the delete, and need not be: a replica starting meanwhile registers
            # the account again, which is what --even-if-configured leads to as well.
            refuse_if_served(conn, account)
        with db.transaction(conn) as cur:
            state = cur.execute(queries.get("forget_state"), {"account_name": account}).fetchone()
            removed = (0, 0)
            if data:
                data_row = cur.execute(queries.get("forget_data"), {"account_name": account}).fetchone()
                assert data_row is not None  # noqa: S101  # an aggregate SELECT returns one row
                removed = (int(data_row[0]), int(data_row[1]))
        assert state is not None  # noqa: S101  # an aggregate SELECT returns one row
        return Forgotten(account, int(state[0]), int(state[2]), int(state[1]), *removed)


def refuse_if_served(conn: db.Connection, account: str) -> None:
    """Raise ``errors.ValidationError`` naming the replica when a running daemon serves ``account``."""
    serving = claims.served_by(conn, account)
    if serving:
        latest = serving[0]
        raise errors.ValidationError(
            f"account {account} is still configured on a running daemon replica ({latest.holder}, "
            f"serving it until {latest.serves_until.isoformat(timespec='seconds')}"
            + (f", and {len(serving) - 1} more" if len(serving) > 1 else "")
            + "): forgotten, it would be synced again from the head of the queue. Remove it from every "
            "replica's configuration and restart them, then wait SYNC_CLAIM_LEASE_SECONDS; or pass "
            "--even-if-configured"
        )


def reset_cursor(conn: db.Connection, account: str, reason: str) -> None:
    """Clear ``account``'s stored token while holding the account's run lock.

    Raises ``errors.ValidationError`` while a run holds the lock: the drain would commit its next
    block's token over the cleared cursor, and the reset would silently not have happened.
    """
    with _account_locked(conn, account, "cursor reset"):
        store.clear_cursor(conn, account, reason)


@contextlib.contextmanager
def _account_locked(conn: db.Connection, account: str, command: str) -> Iterator[None]:
    """Hold ``account``'s run lock (the one ``store.begin_run`` takes) or refuse at once."""
    if not store.try_account_lock(conn, account):
        raise errors.ValidationError(
            f"{command}: account {account} is being synced right now (its lock is held); try again "
            "when its run has ended, or stop its workers first"
        )
    try:
        yield
    finally:
        store.release_account_lock(conn, account)
