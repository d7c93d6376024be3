"""The daemon comes back by itself after database and clock faults, and its probes say when it cannot.

A real daemon (``app.run_daemon`` in-process) against the simulator over HTTP and a real Postgres:
a read-only episode (what a failover looks like from outside), a backwards step of the wall clock,
every backend of the database ended at once, and a restart of the embedded server.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from apscheduler.schedulers import base as apscheduler_base  # type: ignore[import-untyped,unused-ignore]
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sync_worker import app, config, embedded, health, metrics, probes
from sync_worker import simulator as sim_mod
from tests.fixtures.database import DatabaseServer
from tests.integration.test_health_daemon import get, sample, samples
from tests.integration.test_sync import backlog, make_settings
from tests.reliability.crash import wait_until

ACCOUNTS = ["0252012345-00001", "0252012345-00002", "0252012345-00003", "0252012345-00004"]
# /readyz turns 503 this long after the last successful claim poll (the default is 10 s).
STALE_AFTER = 2.0


class Runs(metrics.Metrics):
    """Metrics that also keep every finished run: (account, outcome, monotonic time)."""

    def __init__(self) -> None:
        super().__init__()
        self._runs_lock = threading.Lock()
        self.finished: list[tuple[str, str, float]] = []

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
        super().run_finished(account, outcome, finished_at, succeeded)
        with self._runs_lock:
            self.finished.append((account, outcome, time.monotonic()))

    def outcomes_since(self, since: float) -> dict[str, list[str]]:
        with self._runs_lock:
            runs = list(self.finished)
        out: dict[str, list[str]] = {}
        for account, outcome, at in runs:
            if at >= since:
                out.setdefault(account, []).append(outcome)
        return out

    def all_succeeded_since(self, since: float, accounts: list[str]) -> bool:
        done = self.outcomes_since(since)
        return all("succeeded" in done.get(account, []) for account in accounts)


@contextlib.contextmanager
def running_daemon(settings: config.Settings) -> Iterator[tuple[Runs, str]]:
    """The daemon on a thread with a health server whose /readyz is the claim check; yields the
    metrics and the server's base URL. Stops it and checks it exited cleanly."""
    m = Runs()
    liveness = probes.Liveness(stale_after=STALE_AFTER)
    server = health.HealthServer(
        0, m, live=liveness, ready=health.checks([("claims", liveness.check_claims)]), host="127.0.0.1"
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            app.run_daemon(
                settings, stop_event=stop, metrics=m, install_signal_handlers=False, liveness=liveness
            )
        ),
        daemon=True,
    )
    server.start()
    thread.start()
    try:
        yield m, f"http://127.0.0.1:{server.port}"
    finally:
        stop.set()
        thread.join(timeout=60)
        server.stop()
    assert not thread.is_alive()
    assert result == [0]


def settings_for(sim: sim_mod.Simulator, db_url: str, accounts: list[str], interval: str) -> config.Settings:
    for account in accounts:
        sim.add_account(account)
    return make_settings(
        sim,
        db_url,
        accounts,
        SYNC_INTERVAL_SECONDS=interval,
        SYNC_JITTER_SECONDS="0",
        SYNC_CONCURRENCY="2",
        SYNC_SHUTDOWN_TIMEOUT_SECONDS="10",
    )


def dbname(db_url: str) -> str:
    return str(conninfo_to_dict(db_url)["dbname"])


def end_every_backend(admin_url: str, db_url: str) -> int:
    """pg_terminate_backend for every session of the test database (the daemon's); how many ended."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname(db_url),),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def idle_schedule(db_url: str) -> bool:
    """Every account's claim was released (the daemon sits between runs)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sync_schedule WHERE claimed_by IS NOT NULL").fetchone()
    return row is not None and row[0] == 0


def make_due_now(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE sync_schedule SET due_at = now()")


def run_rows(db_url: str) -> dict[str, list[str]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute("SELECT account_name, outcome FROM sync_run ORDER BY id").fetchall()
    out: dict[str, list[str]] = {}
    for account, outcome in rows:
        out.setdefault(str(account), []).append(str(outcome))
    return out


def stored(db_url: str, account: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sms_history WHERE account_name = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])


def readyz(base: str) -> tuple[int, str]:
    status, body = get(base + "/readyz")
    return status, str(json.loads(body)["reason"])


def test_the_daemon_heals_after_a_read_only_episode_and_readyz_says_so_meanwhile(
    simulator: sim_mod.Simulator, db_url: str, pg_server: DatabaseServer
) -> None:
    """Sessions opened while the database was read-only make every claim fail: /readyz is 503 naming the
    read-only error and the poll age metric climbs (/healthz stays 200: a restart would not help); once
    the database is writable the daemon claims again on fresh sessions, syncs the messages that queued
    meanwhile and /readyz is 200."""
    accounts = ACCOUNTS[:2]
    settings = settings_for(simulator, db_url, accounts, interval="2")
    database = sql.Identifier(dbname(db_url))
    with running_daemon(settings) as (m, base):
        wait_until(lambda: m.all_succeeded_since(0.0, accounts), 30, "the first runs")
        wait_until(lambda: readyz(base)[0] == 200, 10, "/readyz 200")
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database)
            )
        # A session keeps the setting it began with: the daemon's sessions must be new ones (as after
        # a failover, where every session is new).
        assert end_every_backend(pg_server.admin_url, db_url) > 0
        try:
            wait_until(lambda: readyz(base)[0] == 503, 30, "/readyz 503 while claims fail")
            _, reason = readyz(base)
            assert reason.startswith("claims: no successful claim poll for ")
            assert "read-only transaction" in reason
            assert get(base + "/healthz")[0] == 200
            age = sample(
                samples(get(base + "/metrics")[1].decode()), "thingspace_sync_seconds_since_last_claim_poll"
            )
            assert age is not None and age > STALE_AFTER
            queued = {
                account: len(backlog(simulator, account, 30, seed=40 + i))
                for i, account in enumerate(accounts)
            }
        finally:
            with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database)
                )
        writable = time.monotonic()
        # New sessions are writable again; the claims and runs must move to them by themselves.
        wait_until(
            lambda: all(stored(db_url, a) >= queued[a] for a in accounts), 30, "the queued messages stored"
        )
        wait_until(lambda: m.all_succeeded_since(writable, accounts), 10, "runs that succeeded")
        wait_until(lambda: readyz(base)[0] == 200, 10, "/readyz 200 again")
        age = sample(
            samples(get(base + "/metrics")[1].decode()), "thingspace_sync_seconds_since_last_claim_poll"
        )
        assert age is not None and age < STALE_AFTER
    assert all(len(simulator.acknowledged(a)) == stored(db_url, a) for a in accounts)


class _SteppedBack(datetime.datetime):
    """``datetime`` whose ``now()`` reads 600 s behind the real clock (an NTP step back, a VM resumed)."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> Any:
        return datetime.datetime.now(tz) - datetime.timedelta(seconds=600)


def test_syncing_resumes_on_time_after_the_wall_clock_steps_back(
    simulator: sim_mod.Simulator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the scheduler's wall clock steps 600 s back, each account is still synced again one interval
    after its last run (the claim poll does not wait for the wall clock to catch up)."""
    accounts = ACCOUNTS[:2]
    interval = 2.0
    settings = settings_for(simulator, db_url, accounts, interval=f"{interval:g}")
    with running_daemon(settings) as (m, base):
        wait_until(lambda: m.all_succeeded_since(0.0, accounts), 30, "the first runs")
        monkeypatch.setattr(apscheduler_base, "datetime", _SteppedBack)
        stepped = time.monotonic()
        for i, account in enumerate(accounts):
            backlog(simulator, account, 10, seed=60 + i)
        # Due one interval after the last claim; the poll and a run add a second or two.
        wait_until(
            lambda: m.all_succeeded_since(stepped, accounts), interval + 8, "runs one interval after the step"
        )
        assert readyz(base)[0] == 200
        assert get(base + "/healthz")[0] == 200
    assert all(stored(db_url, a) == len(simulator.acknowledged(a)) for a in accounts)


def _synced_within_the_interval_after(
    fault: str, simulator: sim_mod.Simulator, db_url: str, pg_server: DatabaseServer
) -> None:
    accounts = ACCOUNTS
    settings = settings_for(simulator, db_url, accounts, interval="3600")
    with running_daemon(settings) as (m, _):
        wait_until(lambda: m.all_succeeded_since(0.0, accounts), 30, "the first runs")
        # Between runs: the run pool keeps its idle sessions, the dispatcher its own.
        wait_until(lambda: idle_schedule(db_url), 10, "every claim released")
        queued = {
            account: len(backlog(simulator, account, 20, seed=80 + i)) for i, account in enumerate(accounts)
        }
        if fault == "restart":
            embedded.restart(pg_server.admin_url)
        else:
            assert end_every_backend(pg_server.admin_url, db_url) >= 2
        faulted = time.monotonic()
        # Due now, not an hour from now: the runs must go through on their first try.
        make_due_now(db_url)
        wait_until(lambda: m.all_succeeded_since(faulted, accounts), 30, "a successful run of every account")
        assert m.outcomes_since(faulted) == {account: ["succeeded"] for account in accounts}
    rows = run_rows(db_url)
    assert rows == {account: ["succeeded", "succeeded"] for account in accounts}
    for account in accounts:
        assert stored(db_url, account) == len(simulator.acknowledged(account)) >= queued[account]


def test_every_account_is_synced_within_its_interval_after_every_backend_ended(
    simulator: sim_mod.Simulator, db_url: str, pg_server: DatabaseServer
) -> None:
    """Every session of the database ended at once (what a restart does to kept connections): the next
    run of each account succeeds on its first try, with a sync_run row, instead of failing on a dead
    kept connection and waiting a whole interval."""
    _synced_within_the_interval_after("terminate", simulator, db_url, pg_server)


def test_every_account_is_synced_within_its_interval_after_a_postgres_restart(
    simulator: sim_mod.Simulator, db_url: str, pg_server: DatabaseServer
) -> None:
    """A real restart of the (embedded) server while the daemon runs: every account's next run succeeds
    on its first try, with a sync_run row, not an interval later."""
    if os.environ.get("SYNC_TEST_DATABASE_URL") or os.environ.get("SYNC_TEST_DATABASE"):
        pytest.skip("restarts only the session's own embedded server, never a shared one")
    _synced_within_the_interval_after("restart", simulator, db_url, pg_server)


def test_a_daemon_started_while_the_database_is_read_only_waits_for_it_instead_of_exiting(
    simulator: sim_mod.Simulator, db_url: str, pg_server: DatabaseServer
) -> None:
    """Started during a read-only episode (a failover, when orchestrators restart pods), the daemon
    keeps running with /readyz 503 naming the read-only error instead of exiting 1 at its first
    write; once the database is writable it registers its accounts and syncs them by itself."""
    accounts = ACCOUNTS[:2]
    for account in accounts:
        simulator.add_account(account)
    settings = make_settings(
        simulator,
        db_url,
        accounts,
        SYNC_INTERVAL_SECONDS="2",
        SYNC_JITTER_SECONDS="0",
        SYNC_CLAIM_LEASE_SECONDS="3",
        SYNC_SHUTDOWN_TIMEOUT_SECONDS="10",
    )
    queued = {
        account: len(backlog(simulator, account, 15, seed=90 + i)) for i, account in enumerate(accounts)
    }
    database = sql.Identifier(dbname(db_url))
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database))
    try:
        with running_daemon(settings) as (_, base):
            wait_until(
                lambda: "read-only transaction" in readyz(base)[1], 30, "/readyz naming the read-only error"
            )
            assert readyz(base)[0] == 503
            # Alive all along (the claim loop's first round can come before the daemon reports its
            # loops attached, on a loaded machine: so waited for, not sampled once).
            wait_until(lambda: get(base + "/healthz")[0] == 200, 10, "/healthz 200")
            with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database)
                )
            wait_until(
                lambda: all(stored(db_url, a) >= queued[a] for a in accounts),
                30,
                "the queued messages stored",
            )
            wait_until(lambda: readyz(base)[0] == 200, 10, "/readyz 200")
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database))
    assert all(len(simulator.acknowledged(a)) == stored(db_url, a) for a in accounts)
