"""Replicas share the accounts: due times and leased claims in sync_schedule (issue 14)."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from sync_worker import app, claims, config, exitcodes, models, simulator, store
from sync_worker.simulator import hooks as sim_hooks
from tests.integration.test_cli_e2e import cli
from tests.integration.test_scheduler import RecordingMetrics
from tests.integration.test_sync import backlog, canonical, make_client, make_settings, stored_raw
from tests.reliability import crash, proxy

ACCOUNTS = [f"0252012345-0010{i}" for i in range(6)]


def _rows(db: psycopg.Connection[Any]) -> dict[str, claims.ScheduleRow]:
    return {r.account_name: r for r in claims.rows(db)}


def test_claim_skips_live_claims_and_takes_expired_ones(db: psycopg.Connection[Any]) -> None:
    """A claimed account is not claimed again until its lease runs out; only its holder releases it."""
    accounts = ACCOUNTS[:3]
    claims.register(db, accounts, holder="a", lease_seconds=60)
    first = claims.claim(db, accounts, holder="a", limit=2, lease_seconds=60)
    assert len(first) == 2
    second = claims.claim(db, accounts, holder="b", limit=5, lease_seconds=60)
    assert [c.account for c in second] == sorted(set(accounts) - {c.account for c in first})
    assert claims.claim(db, accounts, holder="c", limit=5, lease_seconds=60) == []
    # Another holder cannot release a's claim; a can, and the account is due one delay later.
    assert not claims.release(db, first[0].account, holder="b", delay_seconds=0)
    assert claims.release(db, first[0].account, holder="a", delay_seconds=3600)
    row = _rows(db)[first[0].account]
    assert row.claimed_by is None and row.last_claimed_by == "a"
    assert claims.claim(db, accounts, holder="c", limit=5, lease_seconds=60) == []
    # a's other claim expires (its lease is moved into the past): c takes it over.
    db.execute(
        "UPDATE sync_schedule SET claim_expires_at = now() - interval '1 second' WHERE account_name = %s",
        (first[1].account,),
    )
    taken = claims.claim(db, accounts, holder="c", limit=5, lease_seconds=60)
    assert [c.account for c in taken] == [first[1].account]
    assert not claims.release(db, first[1].account, holder="a", delay_seconds=0)
    # Registering again (a restart, another replica) changes nobody's due time or claim.
    claims.register(db, accounts, holder="d", lease_seconds=60)
    assert _rows(db)[first[1].account].claimed_by == "c"


def test_a_holder_takes_back_at_once_a_claim_it_still_has_but_is_not_running(
    db: psycopg.Connection[Any],
) -> None:
    """A claim whose release failed is taken back by its own holder at once (not after its lease),
    never while that holder says it runs the account, and never by another holder before the lease ends."""
    account, other = ACCOUNTS[:2]
    claims.register(db, [account, other], holder="a", lease_seconds=3600)
    assert sorted(
        c.account for c in claims.claim(db, [account, other], holder="a", limit=2, lease_seconds=3600)
    ) == [
        account,
        other,
    ]
    # Both runs ended while the database was away: neither release reached it.
    assert claims.claim(db, [account, other], holder="b", limit=2, lease_seconds=3600) == []
    # "a" still runs `other`; `account` it holds only on paper.
    again = claims.claim(db, [account, other], holder="a", limit=2, lease_seconds=3600, running=[other])
    assert [c.account for c in again] == [account]
    assert (
        claims.claim(db, [account, other], holder="a", limit=2, lease_seconds=3600, running=[account, other])
        == []
    )
    assert {r.account_name: r.claimed_by for r in claims.rows(db)} == {account: "a", other: "a"}


def test_renewal_extends_only_the_renewing_holders_claims(db: psycopg.Connection[Any]) -> None:
    """A stale replica whose claim expired and was taken over cannot extend the new holder's lease
    (which would delay the next takeover): renewal touches only the renewer's own claims."""
    account, other = ACCOUNTS[:2]
    claims.register(db, [account, other], holder="stale", lease_seconds=60)
    taken = claims.claim(db, [account, other], holder="stale", limit=2, lease_seconds=60)
    assert sorted(c.account for c in taken) == [account, other]
    # The stale replica was cut off past its lease on one account: "new" takes that one over.
    db.execute(
        "UPDATE sync_schedule SET claim_expires_at = now() - interval '1 second' WHERE account_name = %s",
        (account,),
    )
    assert [c.account for c in claims.claim(db, [account], holder="new", limit=1, lease_seconds=5)] == [
        account
    ]
    new_lease = _rows(db)[account].claim_expires_at
    assert new_lease is not None
    # The stale replica still runs both and renews both, with a lease far longer than the new one's.
    assert claims.renew(db, [account, other], holder="stale", lease_seconds=3600) == [other]
    row = _rows(db)[account]
    assert row.claimed_by == "new" and row.claim_expires_at == new_lease
    # Its own claim was extended by the full hour, and the new holder's renewal works on its own.
    stale_lease = _rows(db)[other].claim_expires_at
    assert stale_lease is not None and stale_lease > new_lease + datetime.timedelta(minutes=50)
    assert claims.renew(db, [account], holder="new", lease_seconds=60) == [account]
    renewed = _rows(db)[account].claim_expires_at
    assert renewed is not None and renewed > new_lease


class Tally:
    """Every finished run of every replica, in one place; ``wait_rounds`` waits for n runs per account."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.runs: list[tuple[str, str, str]] = []  # (replica, account, outcome)

    def sink(self, replica: str, accounts: list[str]) -> RecordingMetrics:
        tally = self

        class Sink(RecordingMetrics):
            def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
                super().run_finished(account, outcome, finished_at, succeeded)
                with tally.cond:
                    tally.runs.append((replica, account, outcome))
                    tally.cond.notify_all()

        return Sink(accounts)

    def wait_rounds(self, accounts: list[str], n: int, timeout: float = 60) -> bool:
        def done() -> bool:
            counts = {a: 0 for a in accounts}
            for _, account, _ in self.runs:
                counts[account] = counts.get(account, 0) + 1
            return all(c >= n for c in counts.values())

        with self.cond:
            return self.cond.wait_for(done, timeout=timeout)


class Daemon:
    """``app.run_daemon`` on a thread with its own stop event: one replica."""

    def __init__(self, settings: config.Settings, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.code: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.code.append(
                app.run_daemon(settings, stop_event=self.stop, install_signal_handlers=False, **kwargs)
            )
        )

    def __enter__(self) -> Daemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_two_replicas_sync_each_account_once_per_interval(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Two daemons on one database: each account runs once per interval (starts an interval apart),
    never twice at once and never skipped on a lock, and every message lands once."""
    for i, account in enumerate(ACCOUNTS):
        backlog(simulator, account, 120, seed=200 + i)
    interval = 2.0
    env = {
        "SYNC_INTERVAL_SECONDS": str(interval),
        "SYNC_JITTER_SECONDS": "0",
        "SYNC_CONCURRENCY": "2",
        "SYNC_CLAIM_LEASE_SECONDS": "5",
    }
    settings = make_settings(simulator, db_url, ACCOUNTS, **env)
    tally = Tally()
    with (
        Daemon(settings, metrics=tally.sink("a", ACCOUNTS)) as a,
        Daemon(settings, metrics=tally.sink("b", ACCOUNTS)) as b,
    ):
        assert tally.wait_rounds(ACCOUNTS, 3)
        a.stop.set()
        b.stop.set()
    assert a.code == [0] and b.code == [0]
    assert {outcome for _, _, outcome in tally.runs} == {"succeeded"}
    starts: dict[str, list[datetime.datetime]] = {}
    for account, started in db.execute(
        "SELECT account_name, started_at FROM sync_run ORDER BY started_at"
    ).fetchall():
        starts.setdefault(account, []).append(started)
    for account in ACCOUNTS:
        gaps = [(b2 - b1).total_seconds() for b1, b2 in itertools.pairwise(starts[account])]
        assert len(gaps) >= 2
        # Once per interval across both replicas: claims are an interval apart exactly, and a
        # run's started_at follows its claim by a connection and a lock (slower under load). Two
        # replicas each on their own timer would start runs back to back (or skip on the lock).
        assert min(gaps) >= interval * 0.75, (account, gaps)
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert simulator.queued(account) == []


class Parking:
    """Parks the first ``runs`` runs before their first request until ``release``; ``parked`` is set
    once all of them are parked."""

    def __init__(self, api: Any, runs: int = 1) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._left = runs
        self.parked = threading.Event()
        self.release = threading.Event()
        self.sms = self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        with self._lock:
            park = self._left > 0
            self._left -= 1
            if self._left == 0:
                self.parked.set()
        if park:
            assert self.release.wait(timeout=60)
        yield from self._api.sms.iter_history_blocks(account_name, next, deadline=deadline)


def test_a_replica_that_joins_takes_a_share(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A busy replica cannot start the due accounts; one that joins, with no configuration of its
    own beyond the same settings, claims and syncs them while the first is still busy."""
    accounts = ACCOUNTS[:4]
    for i, account in enumerate(accounts):
        backlog(simulator, account, 50, seed=300 + i)
    env = {"SYNC_INTERVAL_SECONDS": "3600", "SYNC_JITTER_SECONDS": "0", "SYNC_CONCURRENCY": "1"}
    busy_settings = make_settings(simulator, db_url, accounts, **env)
    join_settings = make_settings(simulator, db_url, accounts, **{**env, "SYNC_CONCURRENCY": "4"})
    api = make_client(simulator)
    parking = Parking(api)
    tally = Tally()
    try:
        with Daemon(busy_settings, api=parking, metrics=tally.sink("busy", accounts)):
            assert parking.parked.wait(timeout=30)
            (parked,) = [r.account_name for r in claims.rows(db) if r.claimed_by is not None]
            with Daemon(join_settings, metrics=tally.sink("joined", accounts)):
                assert tally.wait_rounds([a for a in accounts if a != parked], 1)
                parking.release.set()
                assert tally.wait_rounds(accounts, 1)
    finally:
        parking.release.set()
        api.close()
    by_replica = {(replica, account) for replica, account, _ in tally.runs}
    assert by_replica == {("busy", parked)} | {("joined", a) for a in accounts if a != parked}
    for account in accounts:
        assert len(stored_raw(db, account)) == 50


def test_a_killed_replicas_accounts_are_taken_over_after_the_lease(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A `sync-worker run` process killed mid-run (claims held, a history request in flight) leaves
    its accounts claimed; another replica takes every one over once the lease ran out, not before,
    and drains it exactly."""
    accounts = ACCOUNTS[:3]
    for i, account in enumerate(accounts):
        backlog(simulator, account, 250, seed=400 + i)
    lease = 3.0
    env = {
        "SYNC_INTERVAL_SECONDS": "3600",
        "SYNC_JITTER_SECONDS": "0",
        "SYNC_CONCURRENCY": "3",
        "SYNC_CLAIM_LEASE_SECONDS": str(lease),
    }
    child_env = simulator.worker_env(
        accounts=accounts, database_url=db_url, inherit=True, SYNC_LOG_FORMAT="json", **env
    )
    killed = threading.Event()
    victim: list[subprocess.Popen[bytes]] = []

    def kill_at_first_history(request: sim_hooks.Request) -> bool:
        # Runs on the simulator's thread: the replica dies with its first history request in flight.
        if request.kind != "history" or killed.is_set() or not victim:
            return False
        os.kill(victim[0].pid, signal.SIGKILL)
        killed.set()
        return True

    simulator.hooks.drop = kill_at_first_history
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "run"],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    victim.append(proc)
    try:
        assert killed.wait(timeout=60)
        proc.wait(timeout=30)
        killed_at = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        held = {r.account_name: r for r in claims.rows(db)}
        assert all(held[a].claimed_by is not None for a in accounts)
        victim_holder = held[accounts[0]].claimed_by
    finally:
        simulator.hooks.drop = None
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    tally = Tally()
    with Daemon(make_settings(simulator, db_url, accounts, **env), metrics=tally.sink("b", accounts)):
        assert tally.wait_rounds(accounts, 1, timeout=60)
    assert {outcome for _, _, outcome in tally.runs} == {"succeeded"}
    after = {r.account_name: r for r in claims.rows(db)}
    for account in accounts:
        assert after[account].last_claimed_by != victim_holder
        (started,) = db.execute(
            "SELECT min(started_at) FROM sync_run WHERE account_name = %s AND outcome = 'succeeded'",
            (account,),
        ).fetchone() or (None,)
        # Not before the victim's lease ran out (it renews every lease/3), and soon after it did.
        waited = (started - killed_at).total_seconds()
        assert lease * 2 / 3 - 0.5 <= waited <= lease + 5, waited
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert simulator.queued(account) == []


def test_a_replica_cut_off_from_the_database_is_taken_over_after_the_lease(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A replica whose database connections are cut mid-run (its claims and locks held) cannot renew;
    another replica takes every account over once the lease ran out and drains it exactly, and the
    cut-off replica's runs, once they go on, store and acknowledge nothing twice."""
    accounts = ACCOUNTS[:2]
    for i, account in enumerate(accounts):
        backlog(simulator, account, 250, seed=500 + i)
    lease = 3.0
    env = {
        "SYNC_INTERVAL_SECONDS": "3600",
        "SYNC_JITTER_SECONDS": "0",
        "SYNC_CONCURRENCY": "2",
        "SYNC_CLAIM_LEASE_SECONDS": str(lease),
    }
    api = make_client(simulator)
    parking = Parking(api, runs=len(accounts))
    tally = Tally()
    with proxy.PgProxy(db_url) as pg_proxy:
        cut_off = make_settings(simulator, pg_proxy.conninfo(), accounts, **env)
        try:
            with Daemon(cut_off, api=parking, metrics=tally.sink("cut", accounts)):
                assert parking.parked.wait(timeout=30)
                assert all(r.claimed_by is not None for r in claims.rows(db))
                pg_proxy.cut()
                cut_at = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
                with Daemon(
                    make_settings(simulator, db_url, accounts, **env), metrics=tally.sink("b", accounts)
                ):
                    assert tally.wait_rounds(accounts, 1, timeout=60)
                parking.release.set()
        finally:
            parking.release.set()
            api.close()
    assert {(replica, outcome) for replica, _, outcome in tally.runs if replica == "b"} == {
        ("b", "succeeded")
    }
    for account in accounts:
        (started,) = db.execute(
            "SELECT min(started_at) FROM sync_run WHERE account_name = %s AND outcome = 'succeeded'",
            (account,),
        ).fetchone() or (None,)
        waited = (started - cut_at).total_seconds()
        assert lease * 2 / 3 - 0.5 <= waited <= lease + 5, waited
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert len(stored_raw(db, account)) == 250


def _claimed_by(db: psycopg.Connection[Any], account: str) -> str | None:
    row = _rows(db).get(account)
    assert row is not None, f"{account} has no schedule row"
    return row.claimed_by


def _runs(db: psycopg.Connection[Any], account: str) -> list[datetime.datetime]:
    return [
        r[0]
        for r in db.execute(
            "SELECT started_at FROM sync_run WHERE account_name = %s ORDER BY started_at", (account,)
        ).fetchall()
    ]


def test_a_running_daemon_keeps_syncing_an_account_forgotten_or_unscheduled_under_it(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """`accounts forget --even-if-configured` (and a schedule row deleted by hand) under a running
    daemon configured for the account: the daemon registers it again within a heartbeat and syncs
    the new messages, no restart (df24dcc: never again until a restart)."""
    account = ACCOUNTS[0]
    backlog(simulator, account, 30, seed=600)
    lease = 3.0  # a heartbeat every second
    env = {
        "SYNC_INTERVAL_SECONDS": "3600",
        "SYNC_JITTER_SECONDS": "0",
        "SYNC_CLAIM_LEASE_SECONDS": str(lease),
    }
    shell = simulator.worker_env(accounts=[account], database_url=db_url, inherit=True)
    tally = Tally()
    with Daemon(
        make_settings(simulator, db_url, [account], **env), metrics=tally.sink("a", [account])
    ) as daemon:
        assert tally.wait_rounds([account], 1)
        crash.wait_until(lambda: _claimed_by(db, account) is None, 30, "the first run's release")
        forgot = cli(shell, "accounts", "forget", "--account", account, "--even-if-configured", "--yes")
        assert forgot.returncode == exitcodes.OK, forgot.stderr
        assert json.loads(forgot.stdout)["runs"] == 1
        backlog(simulator, account, 20, seed=601)
        # Due at once when it is back: the run follows within a heartbeat and a claim poll, not
        # the hour of the interval.
        assert tally.wait_rounds([account], 2, timeout=30)
        crash.wait_until(lambda: _claimed_by(db, account) is None, 30, "the second run's release")
        db.execute("DELETE FROM sync_schedule WHERE account_name = %s", (account,))
        backlog(simulator, account, 10, seed=602)
        assert tally.wait_rounds([account], 3, timeout=30)
        assert daemon.thread.is_alive() and not daemon.code
    assert {outcome for _, _, outcome in tally.runs} == {"succeeded"}
    assert len(_runs(db, account)) == 2  # the forget removed the first run's record
    assert len(stored_raw(db, account)) == 60
    assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
    assert simulator.queued(account) == []


def test_forget_is_refused_while_a_replica_serves_the_account_whatever_the_shell_configures(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """`accounts forget` from a shell whose configuration lacks the account is refused (exit 2,
    naming the replica) while a daemon replica served it within its lease, and removes nothing;
    once the replica stopped and its lease passed, the same command forgets it."""
    account, elsewhere = ACCOUNTS[:2]
    backlog(simulator, account, 30, seed=700)
    lease = 3.0
    env = {
        "SYNC_INTERVAL_SECONDS": "3600",
        "SYNC_JITTER_SECONDS": "0",
        "SYNC_CLAIM_LEASE_SECONDS": str(lease),
    }
    shell = simulator.worker_env(accounts=[elsewhere], database_url=db_url, inherit=True)
    tally = Tally()
    with Daemon(make_settings(simulator, db_url, [account], **env), metrics=tally.sink("a", [account])):
        assert tally.wait_rounds([account], 1)
        crash.wait_until(lambda: _claimed_by(db, account) is None, 30, "the first run's release")
        cursor = store.get_cursor(db, account)
        refused = cli(shell, "accounts", "forget", "--account", account, "--yes")
        assert refused.returncode == exitcodes.CONFIG, refused.stderr
        assert "still configured on a running daemon replica" in refused.stderr
        (serving,) = claims.served_by(db, account)
        assert serving.holder in refused.stderr
    assert store.get_cursor(db, account) == cursor
    assert len(_runs(db, account)) == 1 and account in _rows(db)
    # The replica stopped: it still counts as serving until its lease passed, then not.
    crash.wait_until(lambda: not claims.served_by(db, account), lease + 10, "the stopped replica's lease")
    forgot = cli(shell, "accounts", "forget", "--account", account, "--yes")
    assert forgot.returncode == exitcodes.OK, forgot.stderr
    assert _runs(db, account) == [] and account not in _rows(db)
