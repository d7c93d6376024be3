"""Scheduler pieces without a database: job configuration, listeners, signal handling, shutdown wait."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

import structlog
from apscheduler import events
from apscheduler.schedulers.background import BackgroundScheduler

from sync_worker import config, errors, scheduler, secret

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


def test_one_job_per_account_with_safe_defaults() -> None:
    """One interval job per account: max_instances=1, coalesce, half-interval grace, bounded pool."""
    sched = scheduler._build_scheduler(
        settings(),
        api=None,  # type: ignore[arg-type]
        connect=None,  # type: ignore[arg-type]
        stop=threading.Event(),
        metrics=None,
        inflight=scheduler._InFlight(),
    )
    jobs = {job.id: job for job in sched.get_jobs()}
    assert set(jobs) == {f"sync:{a}" for a in ACCOUNTS} | {"partitions"}
    first, second = jobs[f"sync:{ACCOUNTS[0]}"], jobs[f"sync:{ACCOUNTS[1]}"]
    assert first.max_instances == 1
    assert first.coalesce is True
    assert first.misfire_grace_time == 150
    assert second.misfire_grace_time == 30
    assert first.trigger.interval == datetime.timedelta(seconds=300)
    assert first.trigger.jitter == 30.0
    assert second.trigger.jitter is None
    assert sched._executors["default"]._pool._max_workers == 3


def test_housekeeping_jobs_prepare_partitions_hourly_and_apply_retention_daily_when_set() -> None:
    """The daemon creates next month's partitions every hour and, with SYNC_RETENTION_DAYS, applies
    retention at start and then daily; without a window it never deletes anything."""
    jobs_by_window = {}
    for days in (None, 400):
        sched = scheduler._build_scheduler(
            dataclasses.replace(settings(), retention_days=days),
            api=None,  # type: ignore[arg-type]
            connect=None,  # type: ignore[arg-type]
            stop=threading.Event(),
            metrics=None,
            inflight=scheduler._InFlight(),
        )
        jobs_by_window[days] = {job.id: job for job in sched.get_jobs()}
    assert "retention" not in jobs_by_window[None]
    assert jobs_by_window[None]["partitions"].trigger.interval == datetime.timedelta(hours=1)
    kept = jobs_by_window[400]["retention"]
    assert kept.trigger.interval == datetime.timedelta(hours=24)
    assert kept.kwargs["days"] == 400 and kept.max_instances == 1


def test_listener_reports_missed_busy_and_failed_jobs() -> None:
    """Missed runs, runs skipped while the previous one runs, and job errors become logs and metrics."""
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
    assert ("scheduler_event", ("missed", "A1")) in metrics.calls
    assert ("scheduler_event", ("max_instances", "A1")) in metrics.calls
    assert ("scheduler_event", ("job_error", "A2")) in metrics.calls
    assert ("error", ("A2", "job_error")) in metrics.calls
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


def test_a_run_skipped_because_the_previous_one_is_busy_is_counted() -> None:
    """With a run in flight, a second due run of the same account fires max_instances: logged and counted."""
    entered, release = threading.Event(), threading.Event()

    def blocking_connect() -> Any:
        entered.set()
        assert release.wait(30)
        raise errors.DatabaseUnavailableError("test: no database")

    metrics = SignallingRecorder("max_instances")
    sched = scheduler._build_scheduler(
        one_account_settings(),
        api=None,  # type: ignore[arg-type]
        connect=blocking_connect,
        stop=threading.Event(),
        metrics=metrics,
        inflight=scheduler._InFlight(),
    )
    with structlog.testing.capture_logs() as logs:
        sched.start()
        try:
            assert entered.wait(30)
            sched.modify_job(f"sync:{ACCOUNTS[0]}", next_run_time=datetime.datetime.now(datetime.UTC))
            assert metrics.seen.wait(30)
        finally:
            release.set()
            sched.shutdown(wait=True)
    assert ("scheduler_event", ("max_instances", ACCOUNTS[0])) in metrics.calls
    assert any(e["event"] == "job_still_running" and e["account"] == ACCOUNTS[0] for e in logs)


def test_a_run_later_than_the_grace_time_is_reported_missed() -> None:
    """A run due longer ago than misfire_grace_time is not run but reported: job_missed log and metric."""
    ran = threading.Event()

    def connect() -> Any:
        ran.set()
        raise errors.DatabaseUnavailableError("test: no database")

    metrics = SignallingRecorder("missed")
    sched = scheduler._build_scheduler(
        one_account_settings(interval=3600.0),
        api=None,  # type: ignore[arg-type]
        connect=connect,
        stop=threading.Event(),
        metrics=metrics,
        inflight=scheduler._InFlight(),
    )
    # Within one interval (so coalescing has no later run time to fall back to) but past the
    # half-interval grace.
    late = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=40)
    sched.modify_job(f"sync:{ACCOUNTS[0]}", next_run_time=late)
    sched.remove_job("partitions")  # it would connect at once; this test is about the account job
    with structlog.testing.capture_logs() as logs:
        sched.start()
        try:
            assert metrics.seen.wait(30)
        finally:
            sched.shutdown(wait=True)
    assert not ran.is_set()
    assert ("scheduler_event", ("missed", ACCOUNTS[0])) in metrics.calls
    assert any(e["event"] == "job_missed" and e["log_level"] == "warning" for e in logs)
