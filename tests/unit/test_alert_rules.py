"""deploy/prometheus/alerts.yml evaluated by Prometheus's own rule engine (`promtool test rules`).

Each scenario drives a real ``metrics.Metrics`` (an injected clock, one scrape a minute) the way
the worker does in that situation (a wrong password, a failing or stale account, a quarantined
block, a stuck claim loop...), and its registry's samples, with the labels a scrape adds, are the
input series. Each alert is shown to fire in its scenario, and every alert to stay quiet while the
worker is healthy. promtool comes from the Makefile (`make test-unit` fetches it when missing).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync_worker import callback_metrics, config, metrics, probes

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
# What a scrape of the daemon adds (deploy/prometheus/prometheus.yml's job).
SCRAPE = {"job": "thingspace-sms-sync", "instance": "worker-1:9464"}
A, B, C, D = "0252012345-00001", "0252012345-00002", "0252012345-00003", "0252012345-00004"
OP = "list_devices_sms_messages"


def _promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.prefix) / "bin" / "promtool")
    if not Path(found).is_file():
        pytest.skip("promtool is not installed (`make test-unit` fetches it into .venv/bin)")
    return found


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


class Worker:
    """A ``Metrics`` on a clock the scenario moves one minute at a time."""

    def __init__(self, *, one_pass: bool = False) -> None:
        self.now = 0.0
        self.m = metrics.Metrics(clock=lambda: self.now, one_pass=one_pass)
        self.api = self.m.api_observer()
        self.cb: callback_metrics.CallbackMetrics | None = None

    def receive(self, answered: str, *, count: int = 1) -> None:
        """``count`` callbacks as the receiver counts them: "stored", "kept" (an unknown shape, 200),
        "refused:REASON" or "failed:KIND" (503 or 500)."""
        assert self.cb is not None, "a receiver scenario sets up the receiver's metrics"
        what, _, detail = answered.partition(":")
        for _ in range(count):
            self.cb.received.inc()
            if what == "refused":
                self.cb.refused.labels(detail).inc()
            elif what == "failed":
                self.cb.store_failures.labels(detail).inc()
            else:
                shape = "unknown" if what == "kept" else "envelope"
                self.cb.stored.labels(A, shape).inc()
                if what == "kept":
                    self.cb.kept.labels(A).inc()
                else:
                    self.cb.messages_inserted.labels(A).inc()

    def run(self, account: str, outcome: str, *, error: str | None = None) -> None:
        """One finished account run, as sync reports it."""
        if outcome in ("succeeded", "quarantined"):
            self.m.block_committed(account, received=100, inserted=100, replays=0, malformed=0)
        if error is not None:
            self.m.error(account, error)
        if outcome == "guard_tripped":
            self.m.login_guard(True)
        self.m.run_finished(account, outcome, self.now, outcome == "succeeded")
        if outcome in ("succeeded", "quarantined"):
            self.m.run_quarantined(account, 1 if outcome == "quarantined" else 0)


Step = Callable[[Worker, int], None]


@dataclasses.dataclass
class Scenario:
    name: str
    minutes: int
    step: Step
    setup: Callable[[Worker], None] = lambda w: None
    exported: bool = True  # False: the worker exposes nothing (down, or never set up)
    up: float | None = 1.0  # the scrape's `up`; None: no scrape job at all


def _healthy_step(w: Worker, minute: int) -> None:
    w.api.on_request(OP, 200, 0.2)
    if minute % 5 == 0:
        w.run(A, "succeeded")
        w.run(B, "succeeded")


def _configure(*accounts: str) -> Callable[[Worker], None]:
    def setup(w: Worker) -> None:
        # The daemon's start: each configured account, its last success read from the database.
        for account in accounts:
            w.m.account_configured(account, last_success=0.0)
        w.m.watch_claim_poll(lambda: 2.0)

    return setup


def _every(minutes: int, action: Step) -> Step:
    def step(w: Worker, minute: int) -> None:
        if minute % minutes == 0:
            action(w, minute)

    return step


def _both(*steps: Step) -> Step:
    def step(w: Worker, minute: int) -> None:
        for s in steps:
            s(w, minute)

    return step


def _stuck_claims(w: Worker) -> None:
    # The claim loop's last successful poll was at minute 5 (the database went read-only).
    w.m.watch_claim_poll(lambda: w.now - min(w.now, 300.0))


def _receiver(w: Worker) -> None:
    # `sync-worker receive`: its own process and Metrics, the receiver's families on its registry,
    # each served account's series at 0 (receiver.Receiver does account_served).
    w.cb = callback_metrics.CallbackMetrics(w.m.registry)
    w.cb.account_served(A)


def _receiving(step: Step) -> Step:
    """Ten callbacks a minute stored, then what ``step`` adds."""

    def both(w: Worker, minute: int) -> None:
        w.receive("stored", count=10)
        step(w, minute)

    return both


HEALTHY = Scenario("healthy", 60, _healthy_step, _configure(A, B))
RECEIVER_HEALTHY = Scenario("receiver_healthy", 60, _receiving(lambda w, m: None), _receiver)


def _healthy_but(step: Step) -> Step:
    """B syncs every 5 minutes and the API answers; A does what ``step`` says."""

    def both(w: Worker, minute: int) -> None:
        w.api.on_request(OP, 200, 0.2)
        if minute % 5 == 0:
            w.run(B, "succeeded")
        step(w, minute)

    return both


# A failing account: every run of A fails on the database, B is fine.
FAILING = Scenario(
    "failing_account",
    50,
    _healthy_but(_every(5, lambda w, _: w.run(A, "failed", error="database"))),
    _configure(A, B),
)


def _database_down(w: Worker, _minute: int) -> None:
    for account in (A, B, C, D):
        w.run(account, "failed", error="database")


def _start_with_stuck_claims(w: Worker) -> None:
    _configure(A, B)(w)
    _stuck_claims(w)


def _held_long_at_20(w: Worker, minute: int) -> None:
    if minute == 20:
        w.m.scheduler_event("lock_busy", A)
        w.m.scheduler_event("lock_held_long", A)


def _quarantine_at_10(w: Worker, minute: int) -> None:
    if minute == 10:
        w.run(A, "quarantined", error="malformed_block")


def _start_with_a_run_stuck_since_minute_5(w: Worker) -> None:
    _configure(A, B)(w)
    # The dispatcher's view: A's run started at minute 5 and never ends (past its budget and margin,
    # probes.overdue_after of the default settings, from minute 15 on).
    after = probes.overdue_after(config.load({}, require_credentials=False, require_accounts=False))
    w.m.watch_overdue_runs(lambda: {A: w.now - 300.0 - after} if w.now - 300.0 > after else {})


def _only_at_start(w: Worker, minute: int) -> None:
    if minute == 0:
        _healthy_step(w, minute)


def _nothing(_w: Worker, _minute: int) -> None:
    return


# (alert, scenario, eval minute, [(labels the alert carries, $value)])
CASES: list[tuple[str, Scenario, int, list[tuple[dict[str, str], float | None]]]] = [
    ("ThingSpaceSyncAccountStale", FAILING, 40, [({"account": A}, 2400.0)]),
    (
        "ThingSpaceSyncLoginGuardTripped",
        Scenario(
            "wrong_password",
            10,
            _every(5, lambda w, m: w.run(A, "failed" if m == 0 else "guard_tripped", error="auth")),
            _configure(A),
        ),
        10,
        [({}, None)],
    ),
    ("ThingSpaceSyncRunsFailing", FAILING, 50, [({"account": A}, None)]),
    ("ThingSpaceSyncLastRunFailing", FAILING, 50, [({"account": A}, None)]),
    (
        "ThingSpaceSyncNoRecentRun",
        # The scheduler ran each account once at start, then stopped starting runs.
        Scenario("scheduler_stuck", 40, _only_at_start, _configure(A, B)),
        40,
        [({"account": A}, 2400.0), ({"account": B}, 2400.0)],
    ),
    (
        "ThingSpaceSyncTargetDown",
        Scenario("target_down", 10, _nothing, exported=False, up=0.0),
        10,
        [(SCRAPE, None)],
    ),
    (
        "ThingSpaceSyncMetricsAbsent",
        Scenario("never_set_up", 20, _nothing, exported=False, up=None),
        20,
        [({}, None)],
    ),
    (
        "ThingSpaceSyncErrorRateHigh",
        # Four accounts on a one-minute interval, every run failing on the database: 4 errors a minute.
        Scenario(
            "database_down",
            40,
            _database_down,
            _configure(A, B, C, D),
        ),
        40,
        [({"kind": "database"}, None)],
    ),
    (
        "ThingSpaceSyncApiServerErrors",
        Scenario(
            "api_degraded",
            40,
            _both(_healthy_step, lambda w, m: w.api.on_request(OP, 503, 1.0)),
            _configure(A, B),
        ),
        40,
        [({"operation": OP}, None)],
    ),
    (
        "ThingSpaceSyncSchedulerMissingRuns",
        Scenario(
            "replicas_short_of_capacity",
            50,
            _both(_healthy_step, _every(5, lambda w, _: w.m.scheduler_event("missed", A))),
            _configure(A, B),
        ),
        50,
        [({"kind": "missed"}, None)],
    ),
    (
        "ThingSpaceSyncCannotClaim",
        Scenario(
            "database_read_only",
            10,
            _healthy_step,
            _start_with_stuck_claims,
        ),
        10,
        [({"instance": SCRAPE["instance"]}, 300.0)],
    ),
    (
        "ThingSpaceSyncAccountLockHeldLong",
        Scenario(
            "account_held_by_a_stuck_run",
            25,
            _healthy_but(_held_long_at_20),
            _configure(A, B),
        ),
        25,
        [({"account": A}, None)],
    ),
    (
        "ThingSpaceSyncRunOverdue",
        Scenario(
            "run_stuck_past_its_budget",
            20,
            _healthy_but(_nothing),
            _start_with_a_run_stuck_since_minute_5,
        ),
        20,
        [({"account": A}, 300.0)],
    ),
    (
        "ThingSpaceSyncCallbacksRefusedSpike",
        # Five callbacks a minute with a wrong password from minute 5 (a listener not registered
        # again after a password change): 50 in the 10 minutes before minute 20.
        Scenario(
            "callbacks_with_a_stale_password",
            20,
            _receiving(lambda w, m: w.receive("refused:bad_credentials", count=5) if m >= 5 else None),
            _receiver,
        ),
        20,
        [({"reason": "bad_credentials"}, 50.0)],
    ),
    (
        "ThingSpaceSyncCallbacksAnswered503",
        # Two more callbacks a minute answered 503 busy (a lock on the history): 2 of 12 received.
        Scenario(
            "callbacks_answered_busy",
            20,
            _receiving(lambda w, m: w.receive("failed:busy", count=2)),
            _receiver,
        ),
        20,
        [({}, 2 / 12)],
    ),
    (
        "ThingSpaceSyncCallbackStoreErrors",
        # The receiver's first failure to store: one callback answered 500 at minute 10.
        Scenario(
            "callback_store_error",
            15,
            _receiving(lambda w, m: w.receive("failed:store_error") if m == 10 else None),
            _receiver,
        ),
        15,
        [({"kind": "store_error"}, None)],
    ),
    (
        "ThingSpaceSyncCallbackUnknownShapeKept",
        # One callback of a shape the receiver does not read, kept at minute 10.
        Scenario(
            "callback_of_an_unknown_shape",
            15,
            _receiving(lambda w, m: w.receive("kept") if m == 10 else None),
            _receiver,
        ),
        15,
        [({"account": A}, None)],
    ),
    (
        "ThingSpaceSyncBlockQuarantined",
        Scenario(
            "quarantined_block",
            15,
            _healthy_but(_quarantine_at_10),
            _configure(A, B),
        ),
        15,
        [({"account": A}, None)],
    ),
]


def _series(scenario: Scenario) -> list[dict[str, str]]:
    """The scenario's samples, scraped once a minute, as promtool input series."""
    worker = Worker()
    scenario.setup(worker)
    values: dict[str, list[str]] = {}
    for minute in range(scenario.minutes + 1):
        worker.now = minute * 60.0
        scenario.step(worker, minute)
        scraped: dict[str, float] = {}
        if scenario.exported:
            for family in worker.m.registry.collect():
                for sample in family.samples:
                    if sample.name.startswith(("process_", "python_")):
                        continue
                    labels = {**sample.labels, **SCRAPE}
                    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                    scraped[f"{sample.name}{{{selector}}}"] = sample.value
        if scenario.up is not None:
            scraped['up{instance="worker-1:9464",job="thingspace-sms-sync"}'] = scenario.up
        else:
            scraped['up{instance="node-1:9100",job="node"}'] = 1.0
        for key, value in scraped.items():
            values.setdefault(key, ["_"] * minute).append(repr(float(value)))
        for column in values.values():
            if len(column) == minute:
                column.append("_")
    return [{"series": key, "values": " ".join(column)} for key, column in values.items()]


def _humanize_duration(v: float) -> str:
    """Prometheus's humanizeDuration for values of a second and more."""
    seconds = int(v)
    days, hours, minutes, secs = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60, seconds % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{v:.4g}s"


def _expand(template: str, labels: dict[str, str], value: float | None) -> str:
    """The template forms alerts.yml uses; anything else fails the test (extend this then)."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr.startswith("$labels."):
            return labels[expr.removeprefix("$labels.")]
        if expr == "$value | humanizeDuration" and value is not None:
            return _humanize_duration(value)
        if expr == "$value | humanize" and value is not None and 1 <= value < 1000:
            return f"{value:.4g}"  # Prometheus's humanize, without the SI prefix it adds from 1000 on
        if expr == "$value | humanizePercentage" and value is not None:
            return f"{value * 100:.4g}%"
        raise AssertionError(f"template form not handled by this test: {{{{ {expr} }}}}")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def _expected(alert: str, fired: list[tuple[dict[str, str], float | None]]) -> list[dict[str, Any]]:
    rule = _rules()[alert]
    return [
        {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: _expand(v, labels, value) for k, v in rule["annotations"].items()},
        }
        for labels, value in fired
    ]


def _promtool_test(tmp_path: Path, scenario: Scenario, checks: list[dict[str, Any]]) -> None:
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": scenario.name,
                "interval": "1m",
                "input_series": _series(scenario),
                "alert_rule_test": checks,
            }
        ],
    }
    path = tmp_path / f"{scenario.name}.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    ran = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]


def test_every_alert_has_a_scenario() -> None:
    """Each alert of alerts.yml is exercised by exactly one firing scenario below."""
    assert sorted(alert for alert, *_ in CASES) == sorted(_rules())


@pytest.mark.parametrize(("alert", "scenario", "minute", "fired"), CASES, ids=[c[0] for c in CASES])
def test_alert_fires_in_its_scenario(
    tmp_path: Path,
    alert: str,
    scenario: Scenario,
    minute: int,
    fired: list[tuple[dict[str, str], float | None]],
) -> None:
    """The alert fires (labels and expanded annotations exactly as expected) on the series the
    worker exports in its scenario."""
    check = {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": _expected(alert, fired)}
    _promtool_test(tmp_path, scenario, [check])


@pytest.mark.parametrize("scenario", [HEALTHY, RECEIVER_HEALTHY], ids=lambda s: s.name)
def test_every_alert_stays_quiet_while_the_worker_is_healthy(tmp_path: Path, scenario: Scenario) -> None:
    """Two accounts syncing every 5 minutes, the API answering, claims polled, the target up (or a
    callback receiver storing ten callbacks a minute): no alert fires at any time of the hour."""
    checks = [
        {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}
        for alert in sorted(_rules())
        for minute in (5, 20, 40, 60)
    ]
    _promtool_test(tmp_path, scenario, checks)


def test_a_firing_expectation_can_fail(tmp_path: Path) -> None:
    """The harness is no rubber stamp: expecting the stale alert on the healthy worker fails."""
    check = {
        "eval_time": "40m",
        "alertname": "ThingSpaceSyncAccountStale",
        "exp_alerts": _expected("ThingSpaceSyncAccountStale", [({"account": A}, 2400.0)]),
    }
    with pytest.raises(AssertionError, match="FAILED"):
        _promtool_test(tmp_path, HEALTHY, [check])
