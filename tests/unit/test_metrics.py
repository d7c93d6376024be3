"""Unit tests of sync_worker.metrics: names, labels, counts and scrape-time freshness."""

from __future__ import annotations

from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import parser

from sync_worker import metrics, secret


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def value(m: metrics.Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_block_counts_accumulate_per_account() -> None:
    """block_committed adds received/inserted/replayed/malformed and one block, per account label."""
    m = metrics.Metrics()
    m.block_committed("0252012345-00001", received=100, inserted=97, replays=3, malformed=1)
    m.block_committed("0252012345-00001", received=20, inserted=20, replays=0, malformed=0)
    m.block_committed("other", received=5, inserted=0, replays=5, malformed=0)

    acct = "0252012345-00001"
    assert value(m, "thingspace_sync_messages_received_total", account=acct) == 120
    assert value(m, "thingspace_sync_messages_inserted_total", account=acct) == 117
    assert value(m, "thingspace_sync_messages_replayed_total", account=acct) == 3
    assert value(m, "thingspace_sync_messages_malformed_total", account=acct) == 1
    assert value(m, "thingspace_sync_blocks_total", account=acct) == 2
    assert value(m, "thingspace_sync_messages_replayed_total", account="other") == 5
    assert value(m, "thingspace_sync_blocks_total", account="other") == 1


def test_each_instance_has_its_own_registry() -> None:
    """Two Metrics objects never share counters (no global registry)."""
    a, b = metrics.Metrics(), metrics.Metrics()
    a.block_committed("x", 1, 1, 0, 0)
    assert value(a, "thingspace_sync_blocks_total", account="x") == 1
    assert value(b, "thingspace_sync_blocks_total", account="x") is None
    assert a.registry is not prometheus_client.REGISTRY


def test_explicit_registry_is_used() -> None:
    """A registry passed in receives the metrics."""
    reg = prometheus_client.CollectorRegistry()
    m = metrics.Metrics(reg)
    m.error("acct", "api_transient")
    assert (
        reg.get_sample_value("thingspace_sync_errors_total", {"account": "acct", "kind": "api_transient"})
        == 1
    )


def test_freshness_is_computed_at_scrape_time() -> None:
    """seconds_since_last_success grows with the clock between scrapes without any new call."""
    clock = FakeClock(10_000.0)
    m = metrics.Metrics(clock=clock)
    m.run_finished("a", "succeeded", finished_at=9_990.0, succeeded=True)
    assert value(m, "thingspace_sync_seconds_since_last_success", account="a") == 10
    clock.now = 10_500.0
    assert value(m, "thingspace_sync_seconds_since_last_success", account="a") == 510
    assert value(m, "thingspace_sync_last_success_timestamp_seconds", account="a") == 9_990


def test_failed_run_does_not_refresh_last_success() -> None:
    """A failed run updates last_run and the runs counter but not last success or freshness."""
    clock = FakeClock(1_000.0)
    m = metrics.Metrics(clock=clock)
    m.run_finished("a", "succeeded", finished_at=1_000.0, succeeded=True)
    clock.now = 2_000.0
    m.run_finished("a", "failed", finished_at=2_000.0, succeeded=False)
    assert value(m, "thingspace_sync_last_success_timestamp_seconds", account="a") == 1_000
    assert value(m, "thingspace_sync_last_run_timestamp_seconds", account="a") == 2_000
    assert value(m, "thingspace_sync_seconds_since_last_success", account="a") == 1_000
    assert value(m, "thingspace_sync_runs_total", account="a", outcome="failed") == 1
    assert value(m, "thingspace_sync_runs_total", account="a", outcome="succeeded") == 1


def test_never_succeeded_account_ages_from_process_start() -> None:
    """An account that never succeeded reports its age since the Metrics object was created."""
    clock = FakeClock(500.0)
    m = metrics.Metrics(clock=clock)
    m.account_configured("new")
    clock.now = 800.0
    assert value(m, "thingspace_sync_seconds_since_last_success", account="new") == 300
    assert value(m, "thingspace_sync_last_success_timestamp_seconds", account="new") is None


def test_seeded_last_success_from_database() -> None:
    """account_configured(last_success=...) makes freshness survive a restart; an older seed never wins."""
    clock = FakeClock(5_000.0)
    m = metrics.Metrics(clock=clock)
    m.account_configured("a", last_success=4_000.0)
    assert value(m, "thingspace_sync_seconds_since_last_success", account="a") == 1_000
    m.run_finished("a", "succeeded", finished_at=4_900.0, succeeded=True)
    m.account_configured("a", last_success=3_000.0)
    assert value(m, "thingspace_sync_seconds_since_last_success", account="a") == 100


def test_login_guard_gauge_toggles() -> None:
    """login_guard(True/False) sets the tripped gauge to 1/0; it starts at 0."""
    m = metrics.Metrics()
    assert value(m, "thingspace_sync_login_guard_tripped") == 0
    m.login_guard(True)
    assert value(m, "thingspace_sync_login_guard_tripped") == 1
    m.login_guard(False)
    assert value(m, "thingspace_sync_login_guard_tripped") == 0


def test_scheduler_events_and_errors_without_account() -> None:
    """Scheduler events count by kind and account; an error without an account uses an empty label."""
    m = metrics.Metrics()
    m.scheduler_event("missed", "a")
    m.scheduler_event("missed", "a")
    m.scheduler_event("max_instances", None)
    m.error(None, "database_unavailable")
    assert value(m, "thingspace_sync_scheduler_events_total", kind="missed", account="a") == 2
    assert value(m, "thingspace_sync_scheduler_events_total", kind="max_instances", account="") == 1
    assert value(m, "thingspace_sync_errors_total", account="", kind="database_unavailable") == 1


def test_api_observer_records_latency_and_retries() -> None:
    """The observer fills the latency histogram by operation/status (none: no response) and retries."""
    m = metrics.Metrics()
    obs = m.api_observer()
    obs.on_request("list_devices_sms_messages", 202, 0.3)
    obs.on_request("list_devices_sms_messages", 202, 0.02)
    obs.on_request("list_devices_sms_messages", None, 5.0)
    obs.on_retry("list_devices_sms_messages", "status_429", 2.5)
    obs.on_retry("list_devices_sms_messages", "status_429", 1.5)

    op = "list_devices_sms_messages"
    hist = "thingspace_sync_api_request_duration_seconds"
    assert value(m, hist + "_count", operation=op, status="202") == 2
    assert value(m, hist + "_sum", operation=op, status="202") == pytest.approx(0.32)
    assert value(m, hist + "_bucket", operation=op, status="202", le="0.025") == 1
    assert value(m, hist + "_count", operation=op, status="none") == 1
    assert value(m, "thingspace_sync_api_retries_total", operation=op, reason="status_429") == 2
    assert value(m, "thingspace_sync_api_retry_wait_seconds_total", operation=op) == 4


def test_labels_never_carry_registered_secrets() -> None:
    """A secret value that leaks into a label is scrubbed before it becomes a time series."""
    token = "tok-" + "9f8e7d6c5b4a"
    secret.register(token)
    m = metrics.Metrics()
    m.error("acct", f"bad {token}")
    m.api_observer().on_retry("login", token, 1.0)
    text = m.render().decode()
    assert token not in text
    assert "thingspace_sync_errors_total" in text


def test_every_metric_name_is_prefixed() -> None:
    """All the worker's own metric families start with thingspace_sync_; the rest are the standard
    process_* and python_* ones."""
    m = metrics.Metrics()
    m.block_committed("a", 1, 1, 0, 0)
    names = [family.name for family in m.registry.collect()]
    assert names
    own = [n for n in names if not n.startswith(("process_", "python_"))]
    assert all(name.startswith("thingspace_sync_") for name in own), names
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(names)


def test_every_series_exists_at_zero_for_configured_accounts() -> None:
    """A configured account has runs/errors/scheduler series at 0 for every known label value, so
    increase() sees the first failure, quarantine or skipped run."""
    m = metrics.Metrics()
    m.account_configured("acct-1")
    for outcome in metrics.RUN_OUTCOMES:
        assert value(m, "thingspace_sync_runs_total", account="acct-1", outcome=outcome) == 0
    for kind in metrics.ERROR_KINDS:
        assert value(m, "thingspace_sync_errors_total", account="acct-1", kind=kind) == 0
    for kind in metrics.SCHEDULER_EVENT_KINDS:
        assert value(m, "thingspace_sync_scheduler_events_total", kind=kind, account="acct-1") == 0
    assert value(m, "thingspace_sync_api_retry_wait_seconds_total", operation="session_login") == 0


def test_no_created_series() -> None:
    """No *_created series are exposed (they would double the series count)."""
    m = metrics.Metrics()
    m.account_configured("acct-1")
    m.run_finished("acct-1", "failed", 5.0, False)
    assert "_created" not in m.render().decode()


def test_known_label_values_match_the_code_that_uses_them() -> None:
    """RUN_OUTCOMES, ERROR_KINDS and the API operations are exactly the values outcomes, sync, scheduler
    and the client (its controllers, paging) use (a new one must be pre-created too)."""
    import inspect  # noqa: PLC0415
    import typing  # noqa: PLC0415

    from sync_worker import client, controllers, outcomes, paging, scheduler, sync  # noqa: PLC0415

    finished = set(typing.get_args(outcomes.Outcome)) - {"skipped_locked"}  # a skip is no finished run
    assert set(metrics.RUN_OUTCOMES) == finished
    kinds = {kind for _, kind in outcomes.ERROR_KINDS} | {"internal", "malformed_block", "job_error"}
    assert set(metrics.ERROR_KINDS) == kinds
    scheduler_src = inspect.getsource(scheduler) + inspect.getsource(sync)
    for kind in metrics.SCHEDULER_EVENT_KINDS:
        assert f'"{kind}"' in scheduler_src
    client_src = inspect.getsource(client) + inspect.getsource(controllers)
    assert paging.OPERATION in metrics.API_OPERATIONS and "operation = paging.OPERATION" in client_src
    for operation in set(metrics.API_OPERATIONS) - {paging.OPERATION}:
        assert f'operation = "{operation}"' in client_src


def test_last_run_outcome_is_one_for_the_last_outcome_only() -> None:
    """thingspace_sync_last_run_outcome is 1 for the last run's outcome and 0 for the others."""
    m = metrics.Metrics()
    m.run_finished("a", "failed", 10.0, False)
    assert value(m, "thingspace_sync_last_run_outcome", account="a", outcome="failed") == 1
    m.run_finished("a", "succeeded", 20.0, True)
    assert value(m, "thingspace_sync_last_run_outcome", account="a", outcome="failed") == 0
    assert value(m, "thingspace_sync_last_run_outcome", account="a", outcome="succeeded") == 1


def test_one_pass_metrics_have_no_process_or_freshness_series() -> None:
    """once's metrics (written out after the pass) carry no process_* nor scrape-time freshness."""
    m = metrics.Metrics(one_pass=True)
    m.account_configured("a", 100.0)
    text = m.render().decode()
    assert "process_" not in text and "seconds_since_last_success" not in text
    assert 'thingspace_sync_last_success_timestamp_seconds{account="a"} 100.0' in text


def test_textfile_is_written_atomically_and_parses(tmp_path: Path) -> None:
    """write_textfile leaves exactly the .prom file (no temporary one), in Prometheus text format."""
    m = metrics.Metrics(one_pass=True)
    m.account_configured("a")
    m.run_finished("a", "succeeded", 50.0, True)
    target = tmp_path / "sync.prom"
    m.write_textfile(str(target))
    assert [p.name for p in target.parent.iterdir()] == ["sync.prom"]
    families = {f.name for f in parser.text_string_to_metric_families(target.read_text())}
    assert "thingspace_sync_last_run_outcome" in families


def test_render_is_prometheus_text() -> None:
    """render() output parses as the Prometheus text format and carries build_info."""

    m = metrics.Metrics()
    m.run_finished("a", "succeeded", 1.0, True)
    families = {f.name: f for f in parser.text_string_to_metric_families(m.render().decode())}
    assert "thingspace_sync_build_info" in families
    assert "thingspace_sync_seconds_since_last_success" in families


def test_claim_poll_age_is_read_at_scrape_time_and_only_where_watched() -> None:
    """seconds_since_last_claim_poll is absent until the daemon watches its claim loop, then each
    scrape reads the current age (a stopped loop shows a growing value, not a frozen one)."""
    m = metrics.Metrics()
    assert "seconds_since_last_claim_poll" not in m.render().decode()
    age = [0.5]
    m.watch_claim_poll(lambda: age[0])
    assert value(m, "thingspace_sync_seconds_since_last_claim_poll") == 0.5
    age[0] = 42.0
    assert value(m, "thingspace_sync_seconds_since_last_claim_poll") == 42.0
