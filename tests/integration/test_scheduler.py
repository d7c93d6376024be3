"""The daemon: APScheduler jobs over real HTTP and Postgres, stop event, signals, shutdown timeout."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from sync_worker import app, exitcodes, models, simulator, status, store
from sync_worker import db as database
from sync_worker import metrics as prom_metrics
from tests.integration.test_sync import backlog, canonical, make_client, make_settings, stored_raw

ACCOUNTS = ["0252012345-00001", "0252012345-00002"]


class RecordingMetrics:
    """A metrics sink that records calls and signals when every account finished a run."""

    def __init__(self, accounts: list[str]) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.finished: dict[str, list[str]] = {}
        self.all_ran = threading.Event()
        self._accounts = set(accounts)
        self._lock = threading.Lock()

    def _record(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))

    def account_configured(self, account: str, last_success: float | None = None) -> None:
        self._record("account_configured", account, last_success)

    def block_committed(
        self, account: str, received: int, inserted: int, replays: int, malformed: int
    ) -> None:
        self._record("block_committed", account, received, inserted, replays, malformed)

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
        self._record("run_finished", account, outcome, succeeded)
        with self._lock:
            self.finished.setdefault(account, []).append(outcome)
            if self._accounts <= set(self.finished):
                self.all_ran.set()

    def error(self, account: str | None, kind: str) -> None:
        self._record("error", account, kind)

    def login_guard(self, tripped: bool) -> None:
        self._record("login_guard", tripped)

    def run_quarantined(self, account: str, blocks: int) -> None:
        self._record("run_quarantined", account, blocks)

    def scheduler_event(self, kind: str, account: str | None) -> None:
        self._record("scheduler_event", kind, account)

    def api_observer(self) -> Any:
        return None


def daemon_settings(sim: simulator.Simulator, db_url: str, **env: str) -> Any:
    return make_settings(
        sim,
        db_url,
        ACCOUNTS,
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_JITTER_SECONDS="0",
        SYNC_CONCURRENCY="2",
        SYNC_SHUTDOWN_TIMEOUT_SECONDS="10",
        **env,
    )


def test_daemon_runs_every_account_and_stops_promptly(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """The daemon syncs each account right away and returns 0 soon after the stop event is set."""
    for i, account in enumerate(ACCOUNTS):
        backlog(simulator, account, 150, seed=i + 30)
    settings = daemon_settings(simulator, db_url)
    metrics = RecordingMetrics(ACCOUNTS)
    stop = threading.Event()
    code: list[int] = []
    daemon = threading.Thread(
        target=lambda: code.append(app.run_daemon(settings, stop_event=stop, metrics=metrics))
    )
    daemon.start()
    try:
        assert metrics.all_ran.wait(timeout=30)
    finally:
        stop.set()
        daemon.join(timeout=15)
    # Ended long before its 3600 s interval, and with 0, not EXIT_SHUTDOWN_TIMEOUT: nothing was left
    # in flight when it stopped.
    assert not daemon.is_alive()
    assert code == [0]
    assert metrics.finished == {account: ["succeeded"] for account in ACCOUNTS}
    for account in ACCOUNTS:
        assert stored_raw(db, account) == canonical(simulator.acknowledged(account))
        assert len(stored_raw(db, account)) == 150


class Stalling:
    """Delivers ``free`` blocks, then parks before the next until ``release`` is set;
    ``parked`` says a drain is in flight."""

    def __init__(self, api: Any, free: int) -> None:
        self._api = api
        self._free = free
        self.parked = threading.Event()
        self.release = threading.Event()
        self.sms = self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        for i, page in enumerate(self._api.sms.iter_history_blocks(account_name, next, deadline=deadline)):
            if i == self._free:
                self.parked.set()
                assert self.release.wait(timeout=30)
            yield page


def test_stop_during_drain_commits_block_and_exits(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A stop while a block is in flight: it is committed, no further ack is sent, the daemon exits 0."""
    account = ACCOUNTS[0]
    backlog(simulator, account, 500, seed=41)
    settings = make_settings(
        simulator, db_url, [account], SYNC_INTERVAL_SECONDS="3600", SYNC_JITTER_SECONDS="0"
    )
    api = make_client(simulator)
    stalling = Stalling(api, free=2)
    stop = threading.Event()
    code: list[int] = []
    daemon = threading.Thread(
        target=lambda: code.append(app.run_daemon(settings, stop_event=stop, api=stalling))
    )
    daemon.start()
    try:
        assert stalling.parked.wait(timeout=30)
        stop.set()
    finally:
        stalling.release.set()
        daemon.join(timeout=15)
        api.close()
    assert code == [0]
    issued = simulator.issued_tokens(account)
    # Blocks 1-3 committed (3 was in flight at the stop); only 1-2 acknowledged.
    assert len(stored_raw(db, account)) == 300
    assert store.get_cursor(db, account) == issued[2]
    assert len(simulator.acknowledged(account)) == 200
    outcome = db.execute("SELECT outcome FROM sync_run WHERE account_name = %s", (account,)).fetchone()
    assert outcome == ("interrupted",)


def test_shutdown_timeout_is_reported(simulator: simulator.Simulator, db_url: str) -> None:
    """A run still busy after the shutdown timeout makes run_daemon return 1 instead of hanging."""
    account = ACCOUNTS[0]
    backlog(simulator, account, 300, seed=43)
    settings = make_settings(
        simulator,
        db_url,
        [account],
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_JITTER_SECONDS="0",
        SYNC_SHUTDOWN_TIMEOUT_SECONDS="0.2",
    )
    api = make_client(simulator)
    stalling = Stalling(api, free=1)
    stop = threading.Event()
    try:

        def stop_once_parked() -> None:
            stalling.parked.wait(timeout=30)
            stop.set()

        threading.Thread(target=stop_once_parked).start()
        code = app.run_daemon(settings, stop_event=stop, api=stalling, install_signal_handlers=False)
    finally:
        stalling.release.set()
    assert code == exitcodes.FAILED
    api.close()


def test_sigterm_sets_the_stop_event(simulator: simulator.Simulator, db_url: str) -> None:
    """SIGTERM stops the daemon cleanly (the handler sets the stop event) and the old handler is restored."""
    backlog(simulator, ACCOUNTS[0], 50, seed=47)
    settings = daemon_settings(simulator, db_url)
    metrics = RecordingMetrics(ACCOUNTS)
    previous = signal.getsignal(signal.SIGTERM)

    def terminate_after_runs() -> None:
        if metrics.all_ran.wait(timeout=30):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_runs, daemon=True).start()
    assert threading.current_thread() is threading.main_thread()
    code = app.run_daemon(settings, metrics=metrics)
    assert code == 0
    assert metrics.all_ran.is_set()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_daemon_start_seeds_every_account_with_its_stored_last_success(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Before any run, the daemon announces each configured account with its stored last success."""
    backlog(simulator, ACCOUNTS[0], 20, seed=51)
    assert app.sync_once(make_settings(simulator, db_url, [ACCOUNTS[0]])).exit_code == 0
    (last_success,) = [s.last_success_at for s in status.account_status(db) if s.account_name == ACCOUNTS[0]]
    assert last_success is not None

    metrics = RecordingMetrics(ACCOUNTS)
    stop = threading.Event()
    stop.set()  # the announcement happens before scheduling: no run is needed
    code = app.run_daemon(
        daemon_settings(simulator, db_url), stop_event=stop, metrics=metrics, install_signal_handlers=False
    )
    assert code == 0
    announced = [args for name, args in metrics.calls if name == "account_configured"]
    assert announced == [(ACCOUNTS[0], last_success.timestamp()), (ACCOUNTS[1], None)]
    assert [name for name, _ in metrics.calls][:2] == ["account_configured", "account_configured"]


class GuardGauge(prom_metrics.Metrics):
    """Real metrics that record every finished run's outcome and let a test wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []
        self.cond = threading.Condition()

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
        super().run_finished(account, outcome, finished_at, succeeded)
        with self.cond:
            self.outcomes.append(outcome)
            self.cond.notify_all()

    def wait_for(self, outcome: str, after: int = 0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: outcome in self.outcomes[after:], timeout=30)

    def gauge(self) -> float:
        value = self.registry.get_sample_value("thingspace_sync_login_guard_tripped")
        assert value is not None
        return value


def test_login_guard_gauge_clears_after_an_operator_reset(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """The tripped gauge is 1 while the guard refuses logins and back to 0 once `auth reset` cleared it."""
    account = ACCOUNTS[0]
    backlog(simulator, account, 30, seed=53)
    settings = make_settings(simulator, db_url, [account], SYNC_INTERVAL_SECONDS="1", SYNC_JITTER_SECONDS="0")
    login_guard = app.login_guard(settings, database.connector(db_url))
    fingerprint = settings.credentials().fingerprint(settings.base_url)
    for _ in range(settings.login_guard_threshold):
        login_guard.finish(login_guard.begin(fingerprint), fingerprint, "refused")
    metrics = GuardGauge()
    stop = threading.Event()
    code: list[int] = []
    daemon = threading.Thread(
        target=lambda: code.append(
            app.run_daemon(settings, stop_event=stop, metrics=metrics, install_signal_handlers=False)
        )
    )
    daemon.start()
    try:
        assert metrics.wait_for("guard_tripped")
        assert metrics.gauge() == 1
        assert simulator.stats.logins == 0
        with metrics.cond:
            seen = len(metrics.outcomes)
        login_guard.reset()
        assert metrics.wait_for("succeeded", after=seen)
        assert metrics.gauge() == 0
    finally:
        stop.set()
        daemon.join(timeout=30)
    assert code == [0]
    assert len(stored_raw(db, account)) == 30
