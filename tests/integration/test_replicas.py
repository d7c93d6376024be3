"""Several replicas on one database: the per-account advisory lock lets one sync each account."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from sync_worker import app, config, metrics, models, outcomes, simulator, status, store, sync
from tests.integration.test_sync import backlog, canonical, make_client, make_settings, stored_raw

ACCOUNTS = ["0252012345-00001", "0252012345-00002", "0252012345-00003"]


class Rendezvous:
    """Holds each account's run (lock taken, first block fetched) until ``gate`` opens;
    sets ``held`` once every account is held."""

    def __init__(self, api: Any, gate: threading.Event, accounts: int) -> None:
        self._api = api
        self._gate = gate
        self._accounts = accounts
        self._lock = threading.Lock()
        self._count = 0
        self.held = threading.Event()
        self.sms = self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        for i, page in enumerate(self._api.sms.iter_history_blocks(account_name, next, deadline=deadline)):
            if i == 0:
                with self._lock:
                    self._count += 1
                    if self._count == self._accounts:
                        self.held.set()
                assert self._gate.wait(timeout=30)
            yield page


def test_two_concurrent_passes_sync_each_account_once(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Two overlapping passes: each account is synced by exactly one, the other skips it, nothing is lost."""
    for i, account in enumerate(ACCOUNTS):
        backlog(simulator, account, 250, seed=i + 1)
    settings = make_settings(simulator, db_url, ACCOUNTS)
    gate = threading.Event()
    # Replica A holds its locks inside the first block until B has skipped.
    api_a, api_b = make_client(simulator), make_client(simulator)
    results: dict[str, outcomes.PassResult] = {}
    rendezvous = Rendezvous(api_a, gate, len(ACCOUNTS))

    def replica_a() -> None:
        results["a"] = app.sync_once(settings, api=rendezvous)

    a = threading.Thread(target=replica_a)
    a.start()
    try:
        # B starts only once A holds every account lock.
        assert rendezvous.held.wait(timeout=30)
        results["b"] = app.sync_once(settings, api=api_b)
    finally:
        gate.set()
        a.join(timeout=60)
        api_a.close()
        api_b.close()
    outcomes_a = {r.account: r.outcome for r in results["a"].accounts}
    outcomes_b = {r.account: r.outcome for r in results["b"].accounts}
    assert outcomes_a == dict.fromkeys(ACCOUNTS, "succeeded")
    assert outcomes_b == dict.fromkeys(ACCOUNTS, "skipped_locked")
    assert results["b"].exit_code == 0
    for account in ACCOUNTS:
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert len(stored_raw(db, account)) == 250
        assert simulator.queued(account) == []


def test_two_once_processes_lose_nothing(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Two `sync-worker once` processes at once: every message lands once, no account synced twice."""
    for i, account in enumerate(ACCOUNTS):
        backlog(simulator, account, 400, seed=i + 10)
    env = simulator.worker_env(accounts=ACCOUNTS, database_url=db_url, inherit=True, SYNC_LOG_FORMAT="json")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sync_worker", "once"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    summaries = [json.loads(out.decode().strip().splitlines()[-1]) for out, _err in outputs]
    inserted = sum(s["inserted"] for s in summaries)
    assert inserted == 3 * 400
    runs = db.execute(
        "SELECT account_name, count(*) FROM sync_run WHERE rows_inserted > 0 GROUP BY account_name"
    ).fetchall()
    # A late replica may re-run an account after the first finished (inserting
    # nothing); no account's messages are split between two concurrent runs.
    assert {r[0]: r[1] for r in runs} == dict.fromkeys(ACCOUNTS, 1)
    for account in ACCOUNTS:
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert simulator.queued(account) == []


def test_account_held_long_by_another_process_is_reported(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """An account whose lock another process has held for more than three intervals is skipped and
    reported: the result and `status` name the holder, a warning metric counts it."""

    account = "0252012345-00042"
    simulator.add_account(account)
    settings = config.load(
        simulator.worker_env(accounts=[account], database_url=db_url, SYNC_INTERVAL_SECONDS="60")
    )
    db.execute(
        "INSERT INTO sync_run (account_name, started_at, worker_host, worker_pid) "
        "VALUES (%s, now() - interval '1 hour', 'other-host', 4242)",
        (account,),
    )
    m = metrics.Metrics()
    with psycopg.connect(db_url, autocommit=True) as holder:
        assert store.try_account_lock(holder, account)
        result = app.sync_once(settings, metrics=m)
        (shown,) = [s for s in status.account_status(db) if s.account_name == account]
    (run,) = result.accounts
    assert run.outcome == "skipped_locked"
    assert run.error is not None and "other-host:4242" in run.error
    assert shown.running_on == "other-host:4242"
    held = m.registry.get_sample_value(
        "thingspace_sync_scheduler_events_total", {"kind": "lock_held_long", "account": account}
    )
    assert held == 1
    assert simulator.stats.history_requests == 0


def test_a_recent_holder_is_named_but_not_reported(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A holder younger than three intervals is an ordinary overlap: named, not counted as a problem."""

    account = "0252012345-00043"
    db.execute(
        "INSERT INTO sync_run (account_name, worker_host, worker_pid) VALUES (%s, 'other-host', 77)",
        (account,),
    )
    m = metrics.Metrics()
    with psycopg.connect(db_url, autocommit=True) as holder:
        assert store.try_account_lock(holder, account)
        result = sync.sync_account(
            object(),  # type: ignore[arg-type]  # never reached: the account is locked
            account,
            store.PostgresStore(lambda: psycopg.connect(db_url, autocommit=True)),
            metrics=m,
            lock_report_after=180.0,
        )
    assert result.outcome == "skipped_locked"
    assert result.error is not None and "other-host:77" in result.error
    held = m.registry.get_sample_value(
        "thingspace_sync_scheduler_events_total", {"kind": "lock_held_long", "account": account}
    )
    assert held in (None, 0)
