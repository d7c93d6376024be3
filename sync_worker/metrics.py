"""Prometheus metrics of the worker.

Every ``Metrics`` owns its own ``CollectorRegistry`` so tests (and two workers
in one process) never share counters, and importing this module registers
nothing. Label values are account names, operation names, HTTP statuses and
short kinds only; they pass through ``secret.scrub`` and are truncated as a
second line of defence against a credential or an unbounded string turning
into a time series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Final, TextIO

import prometheus_client
from prometheus_client import core
from prometheus_client import registry as prom_registry

from sync_worker import errors, secret

PREFIX: Final = "thingspace_sync_"
CONTENT_TYPE: Final = prometheus_client.CONTENT_TYPE_LATEST
_MAX_LABEL_LENGTH: Final = 64

# Every label value known in advance, so each series exists at 0 from the start: rate() and
# increase() cannot see a counter's first event when the series only appears with it.
# tests/unit/test_metrics.py keeps these equal to outcomes.Outcome, outcomes.ERROR_KINDS, scheduler kinds.
RUN_OUTCOMES: Final = ("succeeded", "quarantined", "failed", "interrupted", "guard_tripped")
ERROR_KINDS: Final = (
    "database",
    "login_guard",
    "auth",
    "rate_limited",
    "invalid_cursor",
    "transient",
    "permanent",
    "internal",
    "malformed_block",
    "job_error",
)
SCHEDULER_EVENT_KINDS: Final = ("missed", "max_instances", "lock_busy", "lock_held_long", "job_error")
API_OPERATIONS: Final = (
    "oauth_token",
    "session_login",
    "list_devices_sms_messages",
    "send_sms_to_device",
    "start_queued_sms_delivery",
)
# The reasons a retried call gives (retry.describe of a transient error): timeouts and throttling,
# the usual 5xx of a gateway or an overloaded platform, no answer, an unreadable answer. A rarer 5xx
# still gets its series, when it first happens. Send is left out: a send is never retried.
API_RETRY_REASONS: Final = (
    "http_408",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "no_response",
    "unreadable_body",
)
RETRIED_OPERATIONS: Final = tuple(op for op in API_OPERATIONS if op != "send_sms_to_device")

# API latency spans a fast simulator (milliseconds) up to the 60 s read timeout.
_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _label(value: object) -> str:
    if value is None:
        return ""
    text = secret.scrub(str(value))
    return text[:_MAX_LABEL_LENGTH]


def _version() -> str:
    try:
        return metadata.version("thingspace-sms-sync")
    except metadata.PackageNotFoundError:
        return "unknown"


class ApiObserver:
    """Receives the client's per-request and per-retry callbacks (``ClientConfig.observer``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_request(self, operation: str, status: int | str | None, seconds: float) -> None:
        # No response (timeout, connection reset) is status "none", so it still shows in the histogram.
        status_label = "none" if status is None else _label(status)
        self._metrics.api_request_seconds.labels(_label(operation), status_label).observe(max(seconds, 0.0))

    def on_retry(self, operation: str, reason: str, wait: float) -> None:
        self._metrics.api_retries.labels(_label(operation), _label(reason)).inc()
        self._metrics.api_retry_wait_seconds.labels(_label(operation)).inc(max(wait, 0.0))

    def on_unknown_member(self, member: str) -> None:
        # ``member`` comes capped from gate.unknown_member_label: at most a few dozen series.
        self._metrics.history_unknown_members.labels(_label(member)).inc()


class _FreshnessCollector(prom_registry.Collector):
    """Seconds since each account's last success, computed when scraped.

    A stored gauge would freeze at the value of the last run; an operator
    alerting on staleness needs the age as of now, including when the
    scheduler itself has stopped calling us.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[core.Metric]:
        family = core.GaugeMetricFamily(
            PREFIX + "seconds_since_last_success",
            "Seconds since the account's last successful sync; for an account that has not "
            "succeeded since the process started (and has no recorded success), since process start.",
            labels=["account"],
        )
        now = self._metrics.clock()
        for account, since in self._metrics.freshness_reference().items():
            family.add_metric([account], max(now - since, 0.0))
        yield family

    def describe(self) -> Iterable[core.Metric]:
        # Without describe() the registry would call collect() at registration time.
        return [
            core.GaugeMetricFamily(
                PREFIX + "seconds_since_last_success", "Seconds since last success.", labels=["account"]
            )
        ]


class _OverdueRunsCollector(prom_registry.Collector):
    """Seconds each account's in-flight run is past its budget and margin (0: none is), at scrape time."""

    _NAME: Final = PREFIX + "run_overdue_seconds"
    _HELP: Final = (
        "Seconds the account's in-flight run is past SYNC_RUN_BUDGET_SECONDS plus its margin "
        "(twice THINGSPACE_TOTAL_TIMEOUT + 60 s); 0 when no run of the account is. Above 0 the run is "
        "stuck and /healthz fails (daemon)."
    )

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[core.Metric]:
        family = core.GaugeMetricFamily(self._NAME, self._HELP, labels=["account"])
        overdue = {_label(account): seconds for account, seconds in self._metrics.overdue_runs().items()}
        for account in sorted(set(self._metrics.freshness_reference()) | set(overdue)):
            family.add_metric([account], max(overdue.get(account, 0.0), 0.0))
        yield family

    def describe(self) -> Iterable[core.Metric]:
        return [core.GaugeMetricFamily(self._NAME, self._HELP, labels=["account"])]


class Metrics:
    """All metrics of one worker process, registered in ``self.registry``."""

    def __init__(
        self,
        registry: prometheus_client.CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        one_pass: bool = False,
    ) -> None:
        """``one_pass``: the metrics of one ``once`` pass, written out when it ends (textfile,
        Pushgateway): no ``process_*`` series and no scrape-time freshness, whose values would
        freeze at the moment of writing and mislead (alerts use the timestamps instead)."""
        # The _created series double the series count and no rule here reads them. Process-wide,
        # like prometheus_client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES).
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.clock = clock
        self._started_at = clock()
        self._lock = threading.Lock()
        self._last_success: dict[str, float] = {}
        self._known_accounts: set[str] = set()
        self._overdue_source: Callable[[], Mapping[str, float]] | None = None
        self._claim_poll_gauge: prometheus_client.Gauge | None = None
        r = self.registry

        self.messages_received = prometheus_client.Counter(
            PREFIX + "messages_received",
            "Messages received from the history endpoint.",
            ["account"],
            registry=r,
        )
        self.messages_inserted = prometheus_client.Counter(
            PREFIX + "messages_inserted", "Messages stored for the first time.", ["account"], registry=r
        )
        self.messages_replayed = prometheus_client.Counter(
            PREFIX + "messages_replayed",
            "Messages received again that were already stored (replayed blocks).",
            ["account"],
            registry=r,
        )
        self.messages_malformed = prometheus_client.Counter(
            PREFIX + "messages_malformed",
            "Messages stored with validation problems.",
            ["account"],
            registry=r,
        )
        self.blocks = prometheus_client.Counter(
            PREFIX + "blocks", "History blocks committed to the database.", ["account"], registry=r
        )
        self.runs = prometheus_client.Counter(
            PREFIX + "runs", "Finished account runs by outcome.", ["account", "outcome"], registry=r
        )
        self.errors = prometheus_client.Counter(
            PREFIX + "errors",
            "Errors by kind (account is empty for errors not tied to one account).",
            ["account", "kind"],
            registry=r,
        )
        self.api_request_seconds = prometheus_client.Histogram(
            PREFIX + "api_request_duration_seconds",
            "ThingSpace API request latency by operation and HTTP status ('none': no response).",
            ["operation", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_retries = prometheus_client.Counter(
            PREFIX + "api_retries",
            "API request retries by operation and reason.",
            ["operation", "reason"],
            registry=r,
        )
        self.api_retry_wait_seconds = prometheus_client.Counter(
            PREFIX + "api_retry_wait_seconds",
            "Seconds spent waiting before API retries.",
            ["operation"],
            registry=r,
        )
        self.history_unknown_members = prometheus_client.Counter(
            PREFIX + "history_unknown_members",
            "History answers read as a block although they carried this unknown top-level member "
            "(the first 32 names by name, later ones as 'other').",
            ["member"],
            registry=r,
        )
        self.last_success = prometheus_client.Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the account's last successful sync.",
            ["account"],
            registry=r,
        )
        self.last_run = prometheus_client.Gauge(
            PREFIX + "last_run_timestamp_seconds",
            "Unix time the account's last run finished, whatever its outcome.",
            ["account"],
            registry=r,
        )
        self.last_run_quarantined = prometheus_client.Gauge(
            PREFIX + "last_run_quarantined_blocks",
            "Blocks the account's last finished run quarantined (0: none). Above 0 the pass was not "
            "a plain success: `sync-worker quarantine list`, then `quarantine replay`.",
            ["account"],
            registry=r,
        )
        self.login_guard_tripped = prometheus_client.Gauge(
            PREFIX + "login_guard_tripped",
            "1 while the login guard refuses session logins (operator action needed), else 0.",
            registry=r,
        )
        self.scheduler_events = prometheus_client.Counter(
            PREFIX + "scheduler_events",
            "Scheduler events: missed, max_instances (run skipped, previous still running), lock_busy, ...",
            ["kind", "account"],
            registry=r,
        )
        self.build_info = prometheus_client.Gauge(
            PREFIX + "build_info",
            "Always 1; the version label is the installed package version.",
            ["version"],
            registry=r,
        )
        self.last_run_outcome = prometheus_client.Gauge(
            PREFIX + "last_run_outcome",
            "1 for the outcome of the account's last finished run, 0 for the other outcomes "
            "(works for the daemon and for one-pass deployments alike).",
            ["account", "outcome"],
            registry=r,
        )
        self.build_info.labels(_version()).set(1)
        self.login_guard_tripped.set(0)
        for operation in API_OPERATIONS:
            self.api_retry_wait_seconds.labels(operation)
        for operation in RETRIED_OPERATIONS:
            for reason in API_RETRY_REASONS:
                self.api_retries.labels(operation, reason)
        for kind in SCHEDULER_EVENT_KINDS:
            self.scheduler_events.labels(kind, "")
        self.errors.labels("", "job_error")
        if not one_pass:
            r.register(_FreshnessCollector(self))
            r.register(_OverdueRunsCollector(self))
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)
            prometheus_client.GCCollector(registry=r)

    # --- called by sync / scheduler ---------------------------------------

    def account_configured(self, account: str, last_success: float | None = None) -> None:
        """Show an account before its first run; ``last_success`` seeds freshness from the database."""
        name = _label(account)
        with self._lock:
            self._known_accounts.add(name)
            if last_success is not None and last_success > self._last_success.get(name, float("-inf")):
                self._last_success[name] = last_success
                self.last_success.labels(name).set(last_success)
        for counter in (self.messages_received, self.messages_inserted, self.messages_replayed):
            counter.labels(name)
        self.messages_malformed.labels(name)
        self.blocks.labels(name)
        self.last_run_quarantined.labels(name)
        for outcome in RUN_OUTCOMES:
            self.runs.labels(name, outcome)
        for kind in ERROR_KINDS:
            self.errors.labels(name, kind)
        for kind in SCHEDULER_EVENT_KINDS:
            self.scheduler_events.labels(kind, name)

    def block_committed(
        self, account: str, received: int, inserted: int, replays: int, malformed: int
    ) -> None:
        name = _label(account)
        self.blocks.labels(name).inc()
        self.messages_received.labels(name).inc(received)
        self.messages_inserted.labels(name).inc(inserted)
        self.messages_replayed.labels(name).inc(replays)
        self.messages_malformed.labels(name).inc(malformed)

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
        name = _label(account)
        self.runs.labels(name, _label(outcome)).inc()
        self.last_run.labels(name).set(finished_at)
        for known in {*RUN_OUTCOMES, _label(outcome)}:
            self.last_run_outcome.labels(name, known).set(1 if known == _label(outcome) else 0)
        with self._lock:
            self._known_accounts.add(name)
            if succeeded and finished_at > self._last_success.get(name, float("-inf")):
                self._last_success[name] = finished_at
                self.last_success.labels(name).set(finished_at)

    def run_quarantined(self, account: str, blocks: int) -> None:
        self.last_run_quarantined.labels(_label(account)).set(blocks)

    def error(self, account: str | None, kind: str) -> None:
        self.errors.labels(_label(account), _label(kind)).inc()

    def login_guard(self, tripped: bool) -> None:
        self.login_guard_tripped.set(1 if tripped else 0)

    def scheduler_event(self, kind: str, account: str | None) -> None:
        self.scheduler_events.labels(_label(kind), _label(account)).inc()

    def api_observer(self) -> ApiObserver:
        return ApiObserver(self)

    def watch_overdue_runs(self, source: Callable[[], Mapping[str, float]]) -> None:
        """Where ``run_overdue_seconds`` is read at each scrape (the daemon's ``Liveness.overdue_runs``)."""
        self._overdue_source = source

    def overdue_runs(self) -> Mapping[str, float]:
        source = self._overdue_source
        return source() if source is not None else {}

    def watch_claim_poll(self, seconds_since: Callable[[], float]) -> None:
        """Export the daemon's ``seconds_since_last_claim_poll``, read from ``seconds_since`` at each
        scrape (a stored value would freeze exactly when the claim loop stops). The daemon only: a
        ``once`` pass does not claim."""
        with self._lock:
            if self._claim_poll_gauge is None:
                self._claim_poll_gauge = prometheus_client.Gauge(
                    PREFIX + "seconds_since_last_claim_poll",
                    "Seconds since the daemon's last successful claim poll (monotonic; since process "
                    "start before the first). Above a few seconds the replica cannot claim, so it syncs "
                    "nothing (/readyz says why).",
                    registry=self.registry,
                )
        self._claim_poll_gauge.set_function(seconds_since)

    # --- read side ----------------------------------------------------------

    def freshness_reference(self) -> dict[str, float]:
        """Per known account, the time freshness is measured from."""
        with self._lock:
            return {
                account: self._last_success.get(account, self._started_at)
                for account in sorted(self._known_accounts)
            }

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return prometheus_client.generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        """Write the registry for node_exporter's textfile collector, atomically (a temporary file
        in the same directory, then a rename), so the collector never reads half a file."""
        try:
            prometheus_client.write_to_textfile(path, self.registry)
        except OSError as exc:
            raise errors.ConfigError(
                f"SYNC_METRICS_TEXTFILE={path!r} cannot be written: {exc.strerror}"
            ) from exc

    def push(self, gateway: str, *, job: str, instance: str, timeout: float = 10.0) -> None:
        """Replace this job+instance's group on a Prometheus Pushgateway with the registry."""
        try:
            prometheus_client.push_to_gateway(
                gateway, job=job, registry=self.registry, grouping_key={"instance": instance}, timeout=timeout
            )
        except OSError as exc:
            # urllib's errors name the URL and the reason, never a credential we hold.
            raise errors.TransientError(
                f"SYNC_METRICS_PUSHGATEWAY={gateway!r}: push failed: {secret.scrub(str(exc))}"
            ) from exc


class ProgressMetrics(Metrics):
    """Metrics that also print one line per committed block (``once`` on a terminal)."""

    def __init__(self, out: TextIO, *, one_pass: bool = False) -> None:
        super().__init__(one_pass=one_pass)
        self._out = out
        self._totals: dict[str, list[int]] = {}
        self._print_lock = threading.Lock()

    def block_committed(
        self, account: str, received: int, inserted: int, replays: int, malformed: int
    ) -> None:
        super().block_committed(account, received, inserted, replays, malformed)
        with self._print_lock:
            totals = self._totals.setdefault(account, [0, 0, 0])
            totals[0] += 1
            totals[1] += received
            totals[2] += inserted
            print(
                f"  {account}: block {totals[0]}, {totals[1]} messages, {totals[2]} new",
                file=self._out,
                flush=True,
            )
