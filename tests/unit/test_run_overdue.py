"""A run far past its budget is visible: /healthz names it and thingspace_sync_run_overdue_seconds
shows it (issue 21 item 8). The dispatcher's clock is injected; the probe is served over loopback."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sync_worker import claims, dispatch, health, metrics, probes
from tests.unit import test_monitoring_files
from tests.unit.test_health import get
from tests.unit.test_scheduler import ACCOUNTS, FakeConnection, settings

BUDGET, TOTAL = 300.0, 120.0
# The budget, a token request and a login the budget does not cut, and the slack.
LIMIT = BUDGET + 2 * TOTAL + probes.OVERDUE_SLACK_SECONDS


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class RunningScheduler:
    running = True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[dispatch.Dispatcher]:
    sets = dataclasses.replace(settings(), run_budget_seconds=BUDGET, http_total_timeout=TOTAL)
    d = dispatch.Dispatcher(
        sets,
        api=None,  # type: ignore[arg-type]
        connect=FakeConnection,  # type: ignore[arg-type]
        stop=threading.Event(),
        metrics=None,
        inflight=dispatch.InFlight(),
        observe_guard=None,
        holder="test-holder",
        clock=clock,
    )
    monkeypatch.setattr(d._pool, "submit", lambda fn, *args: None)  # the run "hangs"
    monkeypatch.setattr(claims, "release", lambda *a, **k: None)
    yield d
    d.close(clean=True)


def _claim(monkeypatch: pytest.MonkeyPatch, d: dispatch.Dispatcher, account: str) -> None:
    monkeypatch.setattr(claims, "claim", lambda *a, **k: [claims.Claimed(account, late_seconds=0.0)])
    assert d.claim_due() == 1


def test_overdue_after_is_the_budget_two_total_timeouts_and_the_slack() -> None:
    """A run counts as stuck only past its budget plus a token request and a login (each up to the
    total timeout, never cut by the budget) plus the slack."""
    sets = dataclasses.replace(settings(), run_budget_seconds=BUDGET, http_total_timeout=TOTAL)
    assert probes.overdue_after(sets) == LIMIT == 600.0


def test_a_run_past_its_budget_and_margin_fails_healthz_by_name_and_shows_in_the_metric(
    monkeypatch: pytest.MonkeyPatch, dispatcher: dispatch.Dispatcher, clock: Clock
) -> None:
    """/healthz stays 200 up to the limit, then answers 503 naming the stuck account and how far past
    it is; the metric gives that account its seconds past and the others 0; both clear when it ends."""
    liveness = probes.Liveness()
    liveness.attach(RunningScheduler(), overdue=dispatcher.overdue_runs)
    m = metrics.Metrics()
    for account in ACCOUNTS:
        m.account_configured(account)
    m.watch_overdue_runs(liveness.overdue_runs)

    def overdue(account: str) -> float | None:
        return m.registry.get_sample_value("thingspace_sync_run_overdue_seconds", {"account": account})

    srv = health.HealthServer(0, m, live=liveness.check, ready=lambda: (True, "ok"), host="127.0.0.1")
    with srv:
        url = f"http://127.0.0.1:{srv.port}/healthz"
        _claim(monkeypatch, dispatcher, ACCOUNTS[0])
        clock.now += LIMIT
        assert get(url)[0] == 200
        assert (overdue(ACCOUNTS[0]), overdue(ACCOUNTS[1])) == (0.0, 0.0)
        clock.now += 42.0
        status, _, body = get(url)
        answer: dict[str, Any] = json.loads(body)
        assert status == 503 and answer["status"] == "unavailable"
        assert ACCOUNTS[0] in answer["reason"] and "(42 s)" in answer["reason"]
        assert ACCOUNTS[1] not in answer["reason"]
        assert (overdue(ACCOUNTS[0]), overdue(ACCOUNTS[1])) == (42.0, 0.0)
        assert liveness() is False
        dispatcher._finished(ACCOUNTS[0], None)
        assert get(url)[0] == 200
        assert overdue(ACCOUNTS[0]) == 0.0


def test_a_one_pass_registry_has_no_overdue_series() -> None:
    """A once pass writes its metrics when it ends: an in-flight gauge would be meaningless there."""
    m = metrics.Metrics(one_pass=True)
    m.account_configured(ACCOUNTS[0])
    assert b"run_overdue_seconds" not in m.render()


def test_a_stopped_scheduler_is_still_reported_as_such() -> None:
    """Without a running scheduler the reason stays "scheduler not running", overdue runs or not."""
    liveness = probes.Liveness()
    assert liveness.check() == (False, "scheduler not running")
    liveness.attach(RunningScheduler(), overdue=lambda: {})
    assert liveness.check() == (True, "ok")
    liveness.detach()
    assert liveness.check() == (False, "scheduler not running") and liveness.overdue_runs() == {}


def test_the_overdue_alert_reads_the_series_the_daemon_exposes() -> None:
    """ThingSpaceSyncRunOverdue (deploy/prometheus/alerts.yml) names a series a daemon's registry has."""
    expr = test_monitoring_files._rules()["ThingSpaceSyncRunOverdue"]["expr"]
    referenced = set(re.findall(r"\bthingspace_sync_[a-z_]+", expr))
    m = metrics.Metrics()
    m.account_configured(ACCOUNTS[0])
    exposed = {sample.name for family in m.registry.collect() for sample in family.samples}
    assert referenced == {"thingspace_sync_run_overdue_seconds"} and referenced <= exposed
