"""The sync loop end to end: simulator over real HTTP, real Postgres."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_worker import (
    app,
    client,
    config,
    errors,
    exitcodes,
    metrics,
    models,
    outcomes,
    retry,
    simulator,
    store,
    sync,
)
from sync_worker import db as database
from tests.reliability import crash

ACCOUNT = "0252012345-00001"


class SleepRecorder:
    """An injected ``sleep``: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_client(
    sim: simulator.Simulator,
    *,
    sleep: SleepRecorder | None = None,
    max_attempts: int = 3,
    login_guard: Any = None,
    max_retry_after: float = 120.0,
) -> client.ThingSpaceClient:
    cfg = client.ClientConfig(
        base_url=sim.base_url,
        client_id=sim.config.client_id,
        client_secret=sim.config.client_secret,
        username=sim.config.username,
        password=sim.config.password,
        timeout=(2.0, 5.0),
        retry=retry.RetryPolicy(
            max_attempts=max_attempts,
            initial_backoff=0.01,
            max_backoff=0.01,
            max_retry_after=max_retry_after,
            sleep=sleep or SleepRecorder(),
        ),
        login_guard=login_guard,
        allow_insecure_loopback=True,
    )
    return client.ThingSpaceClient(cfg)


def make_settings(sim: simulator.Simulator, db_url: str, accounts: list[str], **env: str) -> config.Settings:
    base = sim.worker_env(
        accounts=accounts,
        database_url=db_url,
        SYNC_CONCURRENCY="3",
        THINGSPACE_RETRY_MAX_ATTEMPTS="2",
        THINGSPACE_RETRY_MAX_WAIT="0.01",
    )
    base.update(env)
    return config.load(base)


def stored_raw(conn: psycopg.Connection[Any], account: str) -> list[str]:
    rows = conn.execute("SELECT raw_json FROM sms_history WHERE account_name = %s", (account,)).fetchall()
    return sorted(json.dumps(json.loads(r[0]), sort_keys=True) for r in rows)


def backlog(sim: simulator.Simulator, account: str, n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Queue ``n`` distinct realistic messages. Without a message id, exact
    duplicates in different blocks are indistinguishable from a replay by
    design (the store keeps one), so exact-count checks use distinct messages."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for m in simulator.seed_messages(n * 2, seed):
        key = json.dumps(m, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(m)
    out = out[:n]
    sim.inject(account, out)
    return out


def canonical(messages: list[Any]) -> list[str]:
    return sorted(json.dumps(m, sort_keys=True) for m in messages)


class CommitBeforeAck:
    """Wraps the client: before the sync pulls block N+1 (the request that
    acknowledges block N), asserts in a separate session that block N's rows and
    token are already committed."""

    def __init__(self, api: client.ThingSpaceClient, db_url: str) -> None:
        self._api = api
        self._db_url = db_url
        self.checked = 0
        self.violations: list[str] = []

    @property
    def sms(self) -> CommitBeforeAck:
        return self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        inner = self._api.sms.iter_history_blocks(account_name, next, deadline=deadline)
        with psycopg.connect(self._db_url, autocommit=True) as observer:
            for page in inner:
                yield page
                if page.next is None:
                    continue
                # Resumed: the sync asks for the next block; nothing was sent yet.
                self.checked += 1
                token = store.get_cursor(observer, account_name)
                if token != page.next:
                    self.violations.append(f"cursor {token!r} != {page.next!r} before ack")
                # One read of what is committed per block: sms_history.raw is rebuilt when read, so a
                # query per message would rebuild every stored row again for each message.
                committed = [
                    row[0]
                    for row in observer.execute(
                        "SELECT raw FROM sms_history WHERE account_name = %s", (account_name,)
                    ).fetchall()
                ]
                for message in page.messages:
                    if message.raw not in committed:
                        self.violations.append(f"message not committed before ack: {message.raw!r}")
                        break


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def test_backlog_lands_exactly_and_acks_follow_commits(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A multi-block backlog lands exactly and no block is acknowledged before its commit."""
    backlog(simulator, ACCOUNT, 730, seed=7)
    api = make_client(simulator)
    checker = CommitBeforeAck(api, db_url)
    try:
        result = sync.sync_account(checker, ACCOUNT, store.PostgresStore(database.connector(db_url)))
    finally:
        api.close()
    assert result.outcome == "succeeded", result.error
    assert result.blocks == 8
    assert result.received == 730
    assert result.inserted == 730
    assert checker.checked == 7
    assert checker.violations == []
    assert simulator.queued(ACCOUNT) == []
    assert stored_raw(conn, ACCOUNT) == canonical(simulator.acknowledged(ACCOUNT))


def test_second_pass_inserts_nothing(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A second pass that is delivered 150 stored messages again inserts no row: they count as replays."""
    backlog(simulator, ACCOUNT, 250, seed=3)
    settings = make_settings(simulator, db_url, [ACCOUNT])
    first = app.sync_once(settings)
    assert first.exit_code == 0
    assert first.accounts[0].inserted == 250
    # The platform delivers stored messages again (an acknowledgement it lost): without the
    # requeue the second pass would find an empty queue and prove nothing about the upsert.
    assert len(simulator.requeue(ACCOUNT, 150)) == 150
    second = app.sync_once(settings)
    assert second.exit_code == 0
    (account,) = second.accounts
    assert (account.received, account.inserted, account.replays) == (150, 0, 150), account
    assert simulator.queued(ACCOUNT) == []
    assert stored_raw(conn, ACCOUNT) == canonical(simulator.acknowledged(ACCOUNT))
    assert len(stored_raw(conn, ACCOUNT)) == 250


def test_rejected_stored_token_restarts_at_head(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A stored token the API rejects is cleared and the run restarts at the head, losing nothing."""
    backlog(simulator, ACCOUNT, 150, seed=5)
    run_id = store.start_run(conn, ACCOUNT)
    stale = models.HistoryPage(ACCOUNT, (), True, 202, "notAtokenTheSimIssued1")
    store.commit_block(conn, run_id, stale)
    store.finish_run(conn, run_id, "failed", "test setup")
    api = make_client(simulator)
    try:
        result = sync.sync_account(api, ACCOUNT, store.PostgresStore(database.connector(db_url)))
    finally:
        api.close()
    assert result.outcome == "succeeded", result.error
    assert result.received == 150
    assert store.get_cursor(conn, ACCOUNT) is None
    assert stored_raw(conn, ACCOUNT) == canonical(simulator.acknowledged(ACCOUNT))
    assert len(simulator.acknowledged(ACCOUNT)) == 150


def test_persistent_transient_failure_keeps_cursor_and_next_run_resumes(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Persistent 5xx: the run fails, the cursor stays at the last committed block, the next run resumes."""
    backlog(simulator, ACCOUNT, 350, seed=9)
    # Two blocks succeed, then the third request fails on every attempt.
    simulator.faults.script("history", [200, 200, 503, 503, 503])
    sleep = SleepRecorder()
    api = make_client(simulator, sleep=sleep, max_attempts=3)
    try:
        failed = sync.sync_account(api, ACCOUNT, store.PostgresStore(database.connector(db_url)))
        issued = simulator.issued_tokens(ACCOUNT)
        cursor_after_failure = store.get_cursor(conn, ACCOUNT)
        resumed = sync.sync_account(api, ACCOUNT, store.PostgresStore(database.connector(db_url)))
    finally:
        api.close()
    assert failed.outcome == "failed"
    assert failed.error_kind == "ApiTransientError"
    assert failed.blocks == 2
    assert cursor_after_failure == issued[1]
    assert len(sleep.waits) == 2
    last = conn.execute(
        "SELECT outcome, error FROM sync_run WHERE account_name = %s ORDER BY id LIMIT 1", (ACCOUNT,)
    ).fetchone()
    assert last is not None
    assert last[0] == "failed"
    assert "ApiTransientError" in last[1]
    assert resumed.outcome == "succeeded", resumed.error
    assert failed.inserted + resumed.inserted == 350
    assert stored_raw(conn, ACCOUNT) == canonical(simulator.acknowledged(ACCOUNT))


def test_retry_after_beyond_budget_ends_run_without_sleeping(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A Retry-After beyond the remaining budget ends the run at once (deferred), keeping committed blocks."""
    backlog(simulator, ACCOUNT, 250, seed=11)
    simulator.faults.retry_after = "600"
    simulator.faults.script("history", [200, 429])
    sleep = SleepRecorder()
    api = make_client(simulator, sleep=sleep, max_attempts=5, max_retry_after=3600)
    try:
        result = sync.sync_account(
            api, ACCOUNT, store.PostgresStore(database.connector(db_url)), deadline=time.monotonic() + 30.0
        )
    finally:
        api.close()
    assert result.outcome == "failed"
    assert result.error_kind == "RateLimitedError"
    assert result.error is not None
    assert result.error.startswith("deferred")
    assert all(w < 1.0 for w in sleep.waits), sleep.waits
    assert result.blocks == 1
    assert store.get_cursor(conn, ACCOUNT) == simulator.issued_tokens(ACCOUNT)[0]


def test_stop_event_mid_drain_leaves_cursor_at_committed_block(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A stop mid-drain commits the block in flight and stops before acknowledging it."""
    backlog(simulator, ACCOUNT, 500, seed=13)
    stop = threading.Event()
    api = make_client(simulator)

    class StopAfterTwo:
        @property
        def sms(self) -> StopAfterTwo:
            return self

        def iter_history_blocks(
            self, account_name: str, next: str | None = None, *, deadline: float | None = None
        ) -> Iterator[models.HistoryPage]:
            for i, page in enumerate(api.sms.iter_history_blocks(account_name, next, deadline=deadline)):
                if i == 1:
                    stop.set()  # arrives while block 2 is in flight
                yield page

    try:
        result = sync.sync_account(
            StopAfterTwo(), ACCOUNT, store.PostgresStore(database.connector(db_url)), stop_event=stop
        )
    finally:
        api.close()
    assert result.outcome == "interrupted"
    assert result.blocks == 2
    issued = simulator.issued_tokens(ACCOUNT)
    assert store.get_cursor(conn, ACCOUNT) == issued[1]
    # Block 2 was committed but not acknowledged: still queued, and stored.
    assert len(simulator.acknowledged(ACCOUNT)) == 100
    assert len(stored_raw(conn, ACCOUNT)) == 200
    assert simulator.token_acks(ACCOUNT)[issued[1]] == 0


def test_account_lock_busy_skips_and_says_so(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """An account locked by another session is skipped (skipped_locked) without any API request."""
    backlog(simulator, ACCOUNT, 10)
    assert store.try_account_lock(conn, ACCOUNT)
    api = make_client(simulator)
    try:
        result = sync.sync_account(api, ACCOUNT, store.PostgresStore(database.connector(db_url)))
    finally:
        api.close()
    assert result.outcome == "skipped_locked"
    assert simulator.stats.history_requests == 0
    assert len(simulator.queued(ACCOUNT)) == 10


@pytest.mark.parametrize("pooled", [True, False])
def test_account_lock_is_released_when_the_run_ends(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any], pooled: bool
) -> None:
    """After a run, pooled or not, the account's lock is free and its run row is closed."""
    backlog(simulator, ACCOUNT, 150, seed=3)
    api = make_client(simulator)
    pool = database.Pool(database.connector(db_url), max_size=2)
    try:
        result = sync.sync_account(
            api, ACCOUNT, store.PostgresStore(pool if pooled else database.connector(db_url))
        )
        assert result.outcome == "succeeded", result.error
        _take_lock_once_free(conn, pooled)
        store.release_account_lock(conn, ACCOUNT)
        # The kept connection carries no lock into the next run.
        again = sync.sync_account(
            api, ACCOUNT, store.PostgresStore(pool if pooled else database.connector(db_url))
        )
        assert again.outcome == "succeeded", again.error
        _take_lock_once_free(conn, pooled)
    finally:
        pool.close()
        api.close()
    open_runs = conn.execute("SELECT count(*) FROM sync_run WHERE finished_at IS NULL").fetchone()
    assert open_runs == (0,)


def _take_lock_once_free(conn: psycopg.Connection[Any], pooled: bool) -> None:
    if pooled:
        # A kept connection is unlocked before it is given back: free at once.
        assert store.try_account_lock(conn, ACCOUNT)
        return
    # A closed connection's lock goes when its server process exits, a moment after the close.
    crash.wait_until(
        lambda: store.try_account_lock(conn, ACCOUNT), 10, "the closed connection's backend to exit"
    )


def test_database_gone_mid_run_fails_the_account_only(simulator: simulator.Simulator, db_url: str) -> None:
    """Losing the database mid-run ends the run as failed (DatabaseUnavailableError) without raising."""
    backlog(simulator, ACCOUNT, 300, seed=17)
    api = make_client(simulator)

    class KillAfterFirst:
        def __init__(self) -> None:
            self.sms = self

        def iter_history_blocks(
            self, account_name: str, next: str | None = None, *, deadline: float | None = None
        ) -> Iterator[models.HistoryPage]:
            for i, page in enumerate(api.sms.iter_history_blocks(account_name, next, deadline=deadline)):
                if i == 1:
                    with psycopg.connect(db_url, autocommit=True) as admin:
                        admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'sync-worker' AND pid <> pg_backend_pid()"
                        )
                yield page

    try:
        result = sync.sync_account(KillAfterFirst(), ACCOUNT, store.PostgresStore(database.connector(db_url)))
    finally:
        api.close()
    assert result.outcome == "failed"
    assert result.error_kind == "DatabaseUnavailableError"
    assert result.blocks == 1
    # Block 1 was acknowledged by the request for block 2, whose commit failed: block 2 stays queued.
    assert len(simulator.acknowledged(ACCOUNT)) == 100
    with psycopg.connect(db_url, autocommit=True) as check:
        run = check.execute(
            "SELECT outcome, error FROM sync_run WHERE account_name = %s", (ACCOUNT,)
        ).fetchone()
        assert store.get_cursor(check, ACCOUNT) == simulator.issued_tokens(ACCOUNT)[0]
    # The run is closed as failed over a fresh connection, not left looking like it is still going.
    assert run is not None
    assert run[0] == "failed"
    assert "DatabaseUnavailableError" in run[1]


def test_one_account_failure_does_not_stop_others(
    simulator: simulator.Simulator, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """An account the API refuses fails alone: the other accounts of the pass are synced (exit code 1)."""
    backlog(simulator, ACCOUNT, 120, seed=19)
    other = "0252012345-00002"
    backlog(simulator, other, 80, seed=21)
    settings = make_settings(simulator, db_url, [ACCOUNT, other, "0999999999-00009"])
    result = app.sync_once(settings)
    outcomes = {r.account: r.outcome for r in result.accounts}
    assert outcomes == {ACCOUNT: "succeeded", other: "succeeded", "0999999999-00009": "failed"}
    assert result.exit_code == 1
    assert len(stored_raw(conn, other)) == 80
    assert result.summary()["failed"] == ["0999999999-00009"]


def test_outdated_schema_raises_before_any_request(
    simulator: simulator.Simulator, make_database: Any
) -> None:
    """sync_once on an unmigrated database raises SchemaError and sends nothing to the API."""
    empty = make_database(migrated=False)
    settings = make_settings(simulator, empty, [ACCOUNT])
    with pytest.raises(errors.SchemaError):
        app.sync_once(settings)
    assert simulator.stats.token_requests == 0


def test_client_login_guard_drives_the_tripped_gauge(simulator: simulator.Simulator, db_url: str) -> None:
    """built_client's guard sets the gauge to 1 when a login is refused and to 0 after a successful login
    (with new credentials, within the headroom)."""
    m = metrics.Metrics()
    bad = make_settings(
        simulator, db_url, [ACCOUNT], THINGSPACE_PASSWORD="wrong-pass-7", SYNC_LOGIN_GUARD_THRESHOLD="1"
    )
    with (
        app.api_client(bad, database.connector(db_url), metrics=m) as (api, _),
        pytest.raises(errors.LoginFailedError),
    ):
        api.sms.list_devices_sms_messages(ACCOUNT)
    assert m.registry.get_sample_value("thingspace_sync_login_guard_tripped") == 1

    good = make_settings(simulator, db_url, [ACCOUNT], SYNC_LOGIN_GUARD_THRESHOLD="1")
    with app.api_client(good, database.connector(db_url), metrics=m) as (api, _):
        api.sms.list_devices_sms_messages(ACCOUNT)
    assert m.registry.get_sample_value("thingspace_sync_login_guard_tripped") == 0


class _QuarantineApi:
    """Serves a good block, then an unreadable one (MalformedBlockError), then the final block from
    the unreadable block's token: what a platform serving one bad block looks like to the sync."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.calls: list[str | None] = []
        self.sms = self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Any:
        self.calls.append(next)
        wire = {
            "deviceIds": [{"id": "1", "kind": "imei"}],
            "message": "",
            "timestamp": "2024-01-01T00:00:00Z",
        }
        if next is None:
            yield models.HistoryPage(
                account_name, (models.SMSMessage.from_wire({**wire, "message": "one"}),), True, 202, "T1"
            )
            raise errors.MalformedBlockError(
                "unreadable",
                body=b"<html>",
                problem="response body is not JSON",
                next_token="T2",
                request_next="T1",
                status=202,
                operation="list_devices_sms_messages",
            )
        assert next == "T2"
        yield models.HistoryPage(
            account_name, (models.SMSMessage.from_wire({**wire, "message": "two"}),), False, 200, None, "T2"
        )


def test_malformed_block_is_quarantined_counted_and_paging_resumes_after_it(db_url: str) -> None:
    """The sync quarantines a MalformedBlockError, counts malformed_block, and resumes from its next token."""
    account = "0252012345-00077"
    api = _QuarantineApi(account)
    m = metrics.Metrics()
    result = sync.sync_account(api, account, store.PostgresStore(database.connector(db_url)), metrics=m)
    assert api.calls == [None, "T2"]
    assert (result.outcome, result.blocks, result.inserted, result.quarantined) == ("quarantined", 2, 2, 1)
    assert result.ok and result.error is not None and "quarantined 1" in result.error
    assert outcomes.PassResult([result]).exit_code == exitcodes.QUARANTINED
    assert (
        m.registry.get_sample_value(
            "thingspace_sync_errors_total", {"account": account, "kind": "malformed_block"}
        )
        == 1.0
    )
    assert (
        m.registry.get_sample_value("thingspace_sync_last_run_quarantined_blocks", {"account": account})
        == 1.0
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert store.get_cursor(conn, account) is None
        rows = conn.execute("SELECT request_token, next_token, body FROM sms_quarantine").fetchall()
    assert rows == [("T1", "T2", b"<html>")]
