"""Scheduler pieces without a database: poll and renew jobs, due times, free slots, listeners, shutdown."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

import pytest
import structlog
from apscheduler import events
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker import claims, config, scheduler, secret

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


def dispatcher(sets: config.Settings | None = None, **kwargs: Any) -> scheduler.Dispatcher:
    return scheduler.Dispatcher(
        sets or settings(),
        api=None,  # type: ignore[arg-type]
        connect=kwargs.pop("connect", None),
        stop=kwargs.pop("stop", threading.Event()),
        metrics=None,
        inflight=kwargs.pop("inflight", scheduler._InFlight()),
        observe_guard=None,
        holder="test-holder",
    )


def test_the_scheduler_polls_for_due_accounts_and_renews_claims() -> None:
    """A one-second claim poll and a renewal three times per lease (with the hourly partitions job), all
    max_instances=1 and coalesced; account runs go to a pool of SYNC_CONCURRENCY threads."""
    sets = dataclasses.replace(settings(), claim_lease_seconds=30.0)
    d = dispatcher(sets)
    sched = scheduler._build_scheduler(sets, d, metrics=None)
    jobs = {job.id: job for job in sched.get_jobs()}
    assert set(jobs) == {"sync:claim", "sync:renew", "partitions"}
    assert jobs["sync:claim"].trigger.interval == datetime.timedelta(seconds=scheduler.CLAIM_POLL_SECONDS)
    assert jobs["sync:renew"].trigger.interval == datetime.timedelta(seconds=10)
    assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
    assert d._pool._max_workers == 3
    d.close(clean=True)


def test_next_due_is_one_interval_plus_up_to_the_jitter() -> None:
    """A run's account is next due its interval plus a random share of its jitter after the claim."""
    acct = config.AccountSettings(ACCOUNTS[0], 300.0, 30.0)
    assert scheduler.next_delay(acct, rand=lambda: 0.0) == 300.0
    assert scheduler.next_delay(acct, rand=lambda: 0.5) == 315.0
    assert scheduler.next_delay(config.AccountSettings(ACCOUNTS[1], 60.0, 0.0)) == 60.0


def test_a_full_replica_claims_nothing_and_a_stopping_one_claims_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """claim_due asks for exactly the free slots, and not at all when none is free or after the stop."""
    asked: list[int] = []

    def fake_claim(conn: Any, accounts: Any, *, holder: str, limit: int, lease_seconds: float) -> list[Any]:
        asked.append(limit)
        return []

    monkeypatch.setattr(claims, "claim", fake_claim)
    inflight, stop = scheduler._InFlight(), threading.Event()
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


class FakeConnection:
    closed = False

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
    inflight = scheduler._InFlight()
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


def test_liveness_follows_the_scheduler() -> None:
    """Liveness is False before the scheduler is attached, True while it runs, False after shutdown."""
    liveness = scheduler.Liveness()
    assert liveness() is False
    sched = BackgroundScheduler(timezone=datetime.UTC)
    sched.start()
    try:
        liveness.attach(sched)
        assert liveness() is True
    finally:
        sched.shutdown(wait=True)
    assert liveness() is False
    liveness.detach()
    assert liveness() is False


def test_an_account_claimed_late_counts_as_missed_only_after_the_first_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claimed over half an interval after it was due: `missed` (the replicas are short of capacity),
    except in the replica's first interval, when everything overdue is catching up after a start."""
    late = [claims.Claimed(ACCOUNTS[1], late_seconds=45.0)]  # interval 60 s
    monkeypatch.setattr(claims, "claim", lambda *a, **k: list(late))
    metrics = Recorder()
    d = scheduler.Dispatcher(
        settings(),
        api=None,  # type: ignore[arg-type]
        connect=FakeConnection,  # type: ignore[arg-type]
        stop=threading.Event(),
        metrics=metrics,
        inflight=scheduler._InFlight(),
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
