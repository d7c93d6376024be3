"""Scheduler pieces without a database: poll and renew jobs, due times, free slots, listeners, shutdown."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

import psycopg
import pytest
import structlog
from apscheduler import events
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker import claims, config, dispatch, errors, outcomes, probes, scheduler, secret

ACCOUNTS = ("0252012345-00001", "0252012345-00002")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


def settings() -> config.Settings:
    return config.Settings(
        database_url="",
        base_url="https://thingspace.verizon.com/api",
        client_id="id",
        client_secret=secret.Secret("client-secret-value"),
        username="user",
        password=secret.Secret("password-value"),
        accounts=(
            config.AccountSettings(ACCOUNTS[0], 300.0, 30.0),
            config.AccountSettings(ACCOUNTS[1], 60.0, 0.0),
        ),
        concurrency=3,
    )


def dispatcher(sets: config.Settings | None = None, **kwargs: Any) -> dispatch.Dispatcher:
    return dispatch.Dispatcher(
        sets or settings(),
        api=None,  # type: ignore[arg-type]
        connect=kwargs.pop("connect", None),
        stop=kwargs.pop("stop", threading.Event()),
        metrics=None,
        inflight=kwargs.pop("inflight", dispatch.InFlight()),
        observe_guard=None,
        holder="test-holder",
    )


def test_the_claim_poll_renewals_and_guard_run_as_monotonic_loops_not_on_apscheduler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-second claim poll, a renewal three times per lease and the guard observer are threads that
    wait on the stop event (monotonic); APScheduler keeps only the hourly partitions job. Account runs go
    to a pool of SYNC_CONCURRENCY threads."""
    sets = dataclasses.replace(settings(), claim_lease_seconds=30.0)
    stop = RecordingStop()
    d = dispatcher(sets, stop=stop)
    sched = scheduler._build_scheduler(sets, d, metrics=None)
    assert {job.id for job in sched.get_jobs()} == {"partitions"}
    d.observe_guard = lambda: None
    polls: list[str] = []

    def poll() -> None:
        polls.append(threading.current_thread().name)
        waited = {name for name, _ in list(stop.waits)}
        if len(polls) >= 3 and {"sync-renew", "sync-guard"} <= waited:
            stop.set()

    monkeypatch.setattr(d, "poll", poll)
    loops = scheduler._start_loops(sets, d)
    for loop in loops:
        loop.join(timeout=10)
    assert [loop.name for loop in loops] == ["sync-claim", "sync-renew", "sync-guard"]
    assert not any(loop.is_alive() for loop in loops)
    assert len(polls) >= 3 and set(polls) == {"sync-claim"}
    assert {(name, timeout) for name, timeout in stop.waits} >= {
        ("sync-claim", probes.CLAIM_POLL_SECONDS),
        ("sync-renew", 10.0),
        ("sync-guard", scheduler.GUARD_OBSERVE_SECONDS),
    }
    assert d._pool._max_workers == 3
    d.close(clean=True)


class RecordingStop(threading.Event):
    """A stop event that records each timed wait (by thread name) and returns at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[str, float | None]] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append((threading.current_thread().name, timeout))
        return super().wait(0)


def test_next_due_is_one_interval_plus_up_to_the_jitter() -> None:
    """A run's account is next due its interval plus a random share of its jitter after the claim."""
    acct = config.AccountSettings(ACCOUNTS[0], 300.0, 30.0)
    assert dispatch.next_delay(acct, rand=lambda: 0.0) == 300.0
    assert dispatch.next_delay(acct, rand=lambda: 0.5) == 315.0
    assert dispatch.next_delay(config.AccountSettings(ACCOUNTS[1], 60.0, 0.0)) == 60.0


def test_a_full_replica_claims_nothing_and_a_stopping_one_claims_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """claim_due asks for exactly the free slots, and not at all when none is free or after the stop."""
    asked: list[int] = []

    def fake_claim(
        conn: Any, accounts: Any, *, holder: str, limit: int, lease_seconds: float, running: Any
    ) -> list[Any]:
        asked.append(limit)
        return []

    monkeypatch.setattr(claims, "claim", fake_claim)
    inflight, stop = dispatch.InFlight(), threading.Event()
    d = dispatcher(connect=FakeConnection, inflight=inflight, stop=stop)
    assert d.claim_due() == 0
    inflight.enter()
    assert d.claim_due() == 0
    for _ in range(2):
        inflight.enter()
    assert d.claim_due() == 0  # 3 of 3 slots busy: no query at all
    stop.set()
    for _ in range(3):
        inflight.leave()
    assert d.claim_due() == 0
    assert asked == [3, 2]
    d.close(clean=True)


def test_the_claim_is_told_which_accounts_run_so_a_claim_whose_release_failed_is_taken_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """claim_due passes the accounts this replica runs; a run whose release failed (the database was
    away) leaves them, so its claim, still this replica's, is no longer protected from its own holder."""
    told: list[list[str]] = []

    def fake_claim(
        conn: Any, accounts: Any, *, holder: str, limit: int, lease_seconds: float, running: Any
    ) -> list[Any]:
        told.append(list(running))
        return []

    def failing_release(*args: Any, **kwargs: Any) -> bool:
        raise errors.DatabaseUnavailableError("the database is away")

    monkeypatch.setattr(claims, "claim", fake_claim)
    monkeypatch.setattr(claims, "release", failing_release)
    inflight = dispatch.InFlight()
    d = dispatcher(connect=FakeConnection, inflight=inflight)
    inflight.enter()
    d._running[ACCOUNTS[0]] = 0.0  # as _start records a claimed run
    d.claim_due()
    d._finished(ACCOUNTS[0], None)
    d.claim_due()
    assert told == [[ACCOUNTS[0]], []]
    d.close(clean=True)


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    class info:  # the shape of psycopg's ConnectionInfo that db.usable reads
        transaction_status = psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.closed = True


def test_housekeeping_jobs_prepare_partitions_hourly_and_apply_retention_daily_when_set() -> None:
    """The daemon creates next month's partitions every hour and, with SYNC_RETENTION_DAYS, applies
    retention at start and then daily; without a window it never deletes anything."""
    jobs_by_window = {}
    for days in (None, 400):
        sets = dataclasses.replace(settings(), retention_days=days)
        d = dispatcher(sets)
        sched = scheduler._build_scheduler(sets, d, metrics=None)
        jobs_by_window[days] = {job.id: job for job in sched.get_jobs()}
        d.close(clean=True)
    assert "retention" not in jobs_by_window[None]
    assert jobs_by_window[None]["partitions"].trigger.interval == datetime.timedelta(hours=1)
    kept = jobs_by_window[400]["retention"]
    assert kept.trigger.interval == datetime.timedelta(hours=24)
    assert kept.kwargs["days"] == 400 and kept.max_instances == 1


def test_listener_reports_missed_busy_and_failed_jobs() -> None:
    """Missed polls, polls skipped while the previous one runs, and job errors become logs and metrics."""
    metrics = Recorder()
    when = datetime.datetime.now(datetime.UTC)
    with structlog.testing.capture_logs() as logs:
        scheduler._on_event(
            events.JobExecutionEvent(events.EVENT_JOB_MISSED, "sync:A1", None, when), metrics=metrics
        )
        scheduler._on_event(
            events.JobSubmissionEvent(events.EVENT_JOB_MAX_INSTANCES, "sync:A1", None, [when]),
            metrics=metrics,
        )
        scheduler._on_event(
            events.JobExecutionEvent(
                events.EVENT_JOB_ERROR, "sync:A2", None, when, exception=RuntimeError("boom")
            ),
            metrics=metrics,
        )
    assert ("scheduler_event", ("missed", None)) in metrics.calls
    assert ("scheduler_event", ("max_instances", None)) in metrics.calls
    assert ("scheduler_event", ("job_error", None)) in metrics.calls
    assert ("error", (None, "job_error")) in metrics.calls
    assert [e["event"] for e in logs] == ["job_missed", "job_still_running", "job_error"]
    assert logs[2]["log_level"] == "error"


def test_inflight_wait_times_out_while_a_run_is_busy() -> None:
    """Shutdown waits for running account jobs but gives up after the timeout."""
    inflight = dispatch.InFlight()
    inflight.enter()
    assert inflight.wait_idle(0.01) is False
    inflight.leave()
    assert inflight.wait_idle(0.01) is True


class SignallingRecorder(Recorder):
    """A Recorder that also sets an event once a scheduler event of ``kind`` arrives."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.seen = threading.Event()

    def scheduler_event(self, kind: str, account: str | None) -> None:
        self.calls.append(("scheduler_event", (kind, account)))
        if kind == self.kind:
            self.seen.set()


def one_account_settings(interval: float = 60.0) -> config.Settings:
    return dataclasses.replace(
        settings(), accounts=(config.AccountSettings(ACCOUNTS[0], interval, 0.0),), concurrency=2
    )


def test_liveness_follows_the_scheduler_and_the_claim_loop() -> None:
    """Liveness is False before the scheduler is attached, True while it and the claim loop run and the
    loop comes round, False once the loop has not come round for WEDGED_LOOP_SECONDS, and after shutdown;
    check() names each case with its own reason (what /healthz answers)."""
    now = [1000.0]
    liveness = probes.Liveness(clock=lambda: now[0])
    assert liveness() is False
    assert liveness.check() == (False, "scheduler not running")
    sched = BackgroundScheduler(timezone=datetime.UTC)
    sched.start()
    stop = threading.Event()
    loop = threading.Thread(target=stop.wait, name="sync-claim", daemon=True)
    loop.start()
    try:
        liveness.attach(sched, (loop,))
        assert liveness() is True
        now[0] += probes.WEDGED_LOOP_SECONDS - 1
        liveness.round_done()
        now[0] += probes.WEDGED_LOOP_SECONDS - 1
        assert liveness() is True
        now[0] += 2
        assert liveness() is False  # wedged: no round for WEDGED_LOOP_SECONDS
        idle = probes.WEDGED_LOOP_SECONDS + 1
        assert liveness.check() == (False, f"claim loop wedged: no round for {idle:.0f} s")
        liveness.round_done()
        assert liveness() is True
        assert liveness.check() == (True, "ok")
        stop.set()
        loop.join()
        assert liveness() is False  # the loop thread ended
        assert liveness.check() == (False, "loop threads ended: sync-claim")
    finally:
        sched.shutdown(wait=True)
    liveness.detach()
    assert liveness() is False


def test_readiness_needs_a_recent_successful_claim_poll_and_names_the_last_error() -> None:
    """check_claims passes within STALE_POLL_SECONDS of a successful poll, then fails naming the age and the
    last poll error; the age is what the metric reports."""
    now = [50.0]
    liveness = probes.Liveness(clock=lambda: now[0])
    with pytest.raises(errors.TransientError, match="no claim poll has succeeded yet"):
        liveness.check_claims()
    now[0] += 3
    assert liveness.seconds_since_poll() == 3.0
    liveness.poll_succeeded()
    liveness.check_claims()
    liveness.poll_failed("StoreError: ReadOnlySqlTransaction")
    now[0] += probes.STALE_POLL_SECONDS
    liveness.check_claims()
    now[0] += 5
    with pytest.raises(errors.TransientError) as caught:
        liveness.check_claims()
    assert str(caught.value) == (
        f"no successful claim poll for {probes.STALE_POLL_SECONDS + 5:.0f} s "
        "(last error: StoreError: ReadOnlySqlTransaction)"
    )
    assert liveness.seconds_since_poll() == probes.STALE_POLL_SECONDS + 5
    liveness.poll_succeeded()
    liveness.check_claims()


def test_a_loop_keeps_going_after_a_bug_in_its_work() -> None:
    """An exception from a loop's work is logged and counted as job_error, and the loop calls it again."""
    metrics = Recorder()
    stop = threading.Event()
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 2:
            stop.set()
        raise RuntimeError("boom")

    with structlog.testing.capture_logs() as logs:
        scheduler._every(0.0, work, stop, metrics=metrics, name="claim", at_once=True)
    assert len(calls) == 2
    assert [e["event"] for e in logs] == ["job_error", "job_error"]
    assert ("scheduler_event", ("job_error", None)) in metrics.calls


def test_an_account_claimed_late_counts_as_missed_only_after_the_first_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claimed over half an interval after it was due: `missed` (the replicas are short of capacity),
    except in the replica's first interval, when everything overdue is catching up after a start."""
    late = [claims.Claimed(ACCOUNTS[1], late_seconds=45.0)]  # interval 60 s
    monkeypatch.setattr(claims, "claim", lambda *a, **k: list(late))
    metrics = Recorder()
    d = dispatch.Dispatcher(
        settings(),
        api=None,  # type: ignore[arg-type]
        connect=FakeConnection,  # type: ignore[arg-type]
        stop=threading.Event(),
        metrics=metrics,
        inflight=dispatch.InFlight(),
        observe_guard=None,
        holder="test-holder",
    )
    submitted: list[Any] = []
    monkeypatch.setattr(d._pool, "submit", lambda fn, *args: submitted.append(args))
    assert d.claim_due() == 1
    assert ("scheduler_event", ("missed", ACCOUNTS[1])) not in metrics.calls
    d._started -= 61.0
    assert d.claim_due() == 1
    assert metrics.calls.count(("scheduler_event", ("missed", ACCOUNTS[1]))) == 1
    assert submitted == [(ACCOUNTS[1],), (ACCOUNTS[1],)]
    d.close(clean=True)


def test_a_run_that_could_not_start_is_due_again_soon_not_an_interval_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose first statement failed (begun=False) releases its claim due START_RETRY_SECONDS from
    now (or its interval, if shorter); a run that began and failed waits for its interval."""
    released: list[tuple[str, float, bool]] = []

    def release(
        conn: Any, account: str, *, holder: str, delay_seconds: float, from_now: bool = False
    ) -> bool:
        released.append((account, delay_seconds, from_now))
        return True

    monkeypatch.setattr(claims, "release", release)
    inflight = dispatch.InFlight()
    d = dispatcher(connect=FakeConnection, inflight=inflight)
    for account, begun in ((ACCOUNTS[0], False), (ACCOUNTS[1], False), (ACCOUNTS[0], True)):
        inflight.enter()
        d._finished(account, outcomes.AccountResult(account, "failed", error="x", begun=begun))
    assert released[0] == (ACCOUNTS[0], dispatch.START_RETRY_SECONDS, True)
    assert released[1] == (ACCOUNTS[1], min(60.0, dispatch.START_RETRY_SECONDS), True)
    account, delay, from_now = released[2]
    assert (account, from_now) == (ACCOUNTS[0], False) and 300.0 <= delay <= 330.0
    d.close(clean=True)


def test_a_run_the_budget_ended_with_more_waiting_is_due_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that ended at its budget between blocks (more_waiting) releases its claim due now, so a
    backlog is drained run after run; the same outcome without more_waiting waits for its interval."""
    released: list[tuple[str, float, bool]] = []

    def release(
        conn: Any, account: str, *, holder: str, delay_seconds: float, from_now: bool = False
    ) -> bool:
        released.append((account, delay_seconds, from_now))
        return True

    monkeypatch.setattr(claims, "release", release)
    inflight = dispatch.InFlight()
    d = dispatcher(connect=FakeConnection, inflight=inflight)
    for more_waiting in (True, False):
        inflight.enter()
        d._finished(
            ACCOUNTS[0],
            outcomes.AccountResult(ACCOUNTS[0], "succeeded", blocks=3, more_waiting=more_waiting),
        )
    assert released[0] == (ACCOUNTS[0], 0.0, True)
    account, delay, from_now = released[1]
    assert (account, from_now) == (ACCOUNTS[0], False) and 300.0 <= delay <= 330.0
    d.close(clean=True)


def test_the_claim_connection_is_replaced_after_any_error_and_the_statement_tried_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error of any kind on the dispatcher's kept connection (a read-only session's refusal too)
    closes it and the statement runs once more on a new connection; a new connection's error is raised
    and the next statement gets another new one."""
    made: list[FakeConnection] = []

    def connect() -> FakeConnection:
        made.append(FakeConnection())
        return made[-1]

    refusals: list[errors.StoreError] = []

    def claim(conn: Any, accounts: Any, **kwargs: Any) -> list[Any]:
        if refusals:
            raise refusals.pop()
        return []

    monkeypatch.setattr(claims, "claim", claim)
    d = dispatcher(connect=connect)
    assert d.claim_due() == 0
    assert len(made) == 1
    refusals.append(errors.StoreError("ReadOnlySqlTransaction"))
    assert d.claim_due() == 0  # the kept one refused: closed, and the claim ran on a new one
    assert len(made) == 2 and made[0].closed and not made[1].closed
    refusals.extend([errors.StoreError("again"), errors.StoreError("again")])
    with pytest.raises(errors.StoreError):
        d.claim_due()
    assert len(made) == 3 and all(conn.closed for conn in made)
    assert d.claim_due() == 0
    assert len(made) == 4
    d.close(clean=True)
