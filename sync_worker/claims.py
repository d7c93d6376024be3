"""Which replica starts which account run, and when: per-account due times and claims in Postgres.

Every replica registers the accounts it is configured for (``register``, at start and every third
of the lease, which also records it as serving them: ``served_by``) and then, whenever it has
free capacity, claims the earliest due accounts nobody else holds (``claim``). A claim is a lease:
the holder renews it while its runs go on (``renew``); a replica that dies or is cut off stops
renewing, and its accounts become claimable by the others once the lease ran out. When a run ends
the holder releases the claim and the account is next due one interval (plus jitter) after the
claim began (``release``). So each account is synced once per interval across all replicas, and a
replica that joins simply starts claiming. The account advisory lock (``store.try_account_lock``)
stays the guarantee that two runs of one account never overlap: a claim only decides who starts
which run. SQL lives in ``sql/queries/schedule.sql`` (tables ``sync_schedule``, ``sync_replica``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import uuid
from collections.abc import Sequence

from sync_worker import db, queries


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    account: str
    late_seconds: float  # how long after its due time the account was claimed


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleRow:
    account_name: str
    due_at: datetime.datetime
    claimed_by: str | None
    claim_expires_at: datetime.datetime | None
    last_claimed_by: str | None
    last_finished_at: datetime.datetime | None


def holder_id() -> str:
    """A name for this process's claims: host and pid for people, a random part for uniqueness
    (a restarted container can reuse the pid of the process it replaced)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Serving:
    """A replica that serves an account: it listed it at a heartbeat whose lease has not passed."""

    holder: str
    serves_until: datetime.datetime


def register(conn: db.Connection, accounts: Sequence[str], *, holder: str, lease_seconds: float) -> int:
    """The replica ``holder``'s heartbeat: ``accounts`` are in the schedule (a missing row is due at
    once; an existing one keeps its due time and claim) and ``holder`` serves them for one lease
    from now (``served_by``). Return how many schedule rows were missing and created.

    Run at start and every third of the lease: a row deleted meanwhile (``accounts forget``, by
    hand) is back within that time, so a configured account is never left unscheduled.
    """
    with db.transaction(conn, single_statement=True) as cur:
        row = cur.execute(
            queries.get("schedule_register"),
            {"accounts": list(accounts), "holder": holder, "lease": float(lease_seconds)},
        ).fetchone()
    return int(row[0]) if row is not None else 0


def served_by(conn: db.Connection, account: str) -> list[Serving]:
    """The replicas serving ``account`` now (latest lease first); empty when none does."""
    with db.transaction(conn, single_statement=True) as cur:
        found = cur.execute(queries.get("schedule_served"), {"account_name": account}).fetchall()
    return [Serving(str(r[0]), r[1]) for r in found]


def claim(
    conn: db.Connection,
    accounts: Sequence[str],
    *,
    holder: str,
    limit: int,
    lease_seconds: float,
    running: Sequence[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` of ``accounts`` that are due and not held by a live claim.

    ``running`` are the accounts ``holder`` is running now: any other claim ``holder`` still has
    is one it could not release (the database was away when the run ended), so it is taken back
    at once rather than after its lease. The caller must not start runs between reading
    ``running`` and this call."""
    if limit <= 0 or not accounts:
        return []
    with db.transaction(conn, single_statement=True) as cur:
        rows = cur.execute(
            queries.get("schedule_claim"),
            {
                "accounts": list(accounts),
                "holder": holder,
                "limit": limit,
                "lease": float(lease_seconds),
                "running": list(running),
            },
        ).fetchall()
    return [Claimed(str(r[0]), max(0.0, float(r[1]))) for r in rows]


def renew(conn: db.Connection, accounts: Sequence[str], *, holder: str, lease_seconds: float) -> list[str]:
    """Extend ``holder``'s claims of ``accounts`` (its running ones) by one lease from now; return
    the accounts renewed. An account missing from the answer is no longer ``holder``'s (its claim
    expired and another replica took it, or it was forgotten): its lease is left alone."""
    if not accounts:
        return []
    with db.transaction(conn, single_statement=True) as cur:
        found = cur.execute(
            queries.get("schedule_renew"),
            {"accounts": list(accounts), "holder": holder, "lease": float(lease_seconds)},
        ).fetchall()
    return sorted(str(r[0]) for r in found)


def release(
    conn: db.Connection, account: str, *, holder: str, delay_seconds: float, from_now: bool = False
) -> bool:
    """End ``holder``'s claim of ``account``: the next run is due ``delay_seconds`` after the claim
    began (or after now with ``from_now``). False: the claim had expired and another holds it."""
    with db.transaction(conn, single_statement=True) as cur:
        cur.execute(
            queries.get("schedule_release"),
            {
                "account_name": account,
                "holder": holder,
                "delay": float(delay_seconds),
                "from_now": from_now,
            },
        )
        return cur.rowcount == 1


def release_all(conn: db.Connection, *, holder: str) -> None:
    """Hand back every claim ``holder`` still has, due at once for the other replicas."""
    with db.transaction(conn, single_statement=True) as cur:
        cur.execute(queries.get("schedule_release_all"), {"holder": holder})


def rows(conn: db.Connection) -> list[ScheduleRow]:
    """The whole schedule, by account (for tests, benchmarks and operators)."""
    with db.transaction(conn, single_statement=True) as cur:
        found = cur.execute(queries.get("schedule_rows")).fetchall()
    return [ScheduleRow(*r) for r in found]
