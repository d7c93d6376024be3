"""Prometheus metrics of the callback receiver (push mode), registered on a given registry.

The receiver shares the process's ``metrics.Metrics`` registry (so ``/metrics`` shows both);
label values are served account names, shapes and short refusal reasons only: an account name
from a refused request's URL is never a label (anyone can make one up).
"""

from __future__ import annotations

import prometheus_client

from sync_worker import metrics

# The kinds of callback_store_failures: answered 503 (the first four) or 500 (the last two).
FAILURE_KINDS = ("busy", "queue_full", "commit_timeout", "database_unavailable", "store_error", "unexpected")


class CallbackMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.registry = registry
        p = metrics.PREFIX
        self.received = prometheus_client.Counter(
            p + "callbacks_received",
            "Callback requests that reached the receiver (before any check).",
            registry=registry,
        )
        self.refused = prometheus_client.Counter(
            p + "callbacks_refused",
            "Callback requests refused, by reason (bad_credentials, source_not_allowed, "
            "account_not_served, body_too_large, not_json, ...). Nothing of them was stored.",
            ["reason"],
            registry=registry,
        )
        self.stored = prometheus_client.Counter(
            p + "callbacks_stored",
            "Callbacks committed (messages and body) and answered 2xx, by account and shape.",
            ["account", "shape"],
            registry=registry,
        )
        self.kept = prometheus_client.Counter(
            p + "callbacks_kept_unknown",
            "Callbacks of a shape the receiver does not know: kept in sms_callback, answered 2xx, "
            "their messages NOT in sms_history. Above 0 needs a look (docs/operations.md).",
            ["account"],
            registry=registry,
        )
        self.messages_inserted = prometheus_client.Counter(
            p + "callback_messages_inserted",
            "Pushed messages stored for the first time.",
            ["account"],
            registry=registry,
        )
        self.messages_replayed = prometheus_client.Counter(
            p + "callback_messages_replayed",
            "Pushed messages already stored (a redelivery, or polled first).",
            ["account"],
            registry=registry,
        )
        self.store_failures = prometheus_client.Counter(
            p + "callback_store_failures",
            "Callbacks that could not be committed, by kind: answered 503 with Retry-After (busy: no "
            "connection in time, a lock or statement timeout; queue_full, commit_timeout: more "
            "callbacks than the database takes; database_unavailable) or 500 (store_error, "
            "unexpected), so ThingSpace retries.",
            ["kind"],
            registry=registry,
        )
        self.commit_transactions = prometheus_client.Counter(
            p + "callback_commit_transactions",
            "Transactions of the receiver's group commit, by outcome: committed, failed (every "
            "callback in it answered 503/500) or split (failed, then each callback written alone).",
            ["outcome"],
            registry=registry,
        )
        self.commit_batch_size = prometheus_client.Histogram(
            p + "callback_commit_batch_size",
            "Callbacks per committed transaction of the group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.commit_queue = prometheus_client.Gauge(
            p + "callback_commit_queue",
            "Callbacks waiting for a transaction of the group commit.",
            registry=registry,
        )
        for outcome in ("committed", "failed", "split"):
            self.commit_transactions.labels(outcome)
        # Every kind at 0 from the start: increase() (ThingSpaceSyncCallbackStoreErrors) sees no
        # increase in a series whose first sample is already 1, so a first failure would not alert.
        for kind in FAILURE_KINDS:
            self.store_failures.labels(kind)

    def account_served(self, account: str) -> None:
        """Show an account's series at 0 before its first callback."""
        for counter in (self.kept, self.messages_inserted, self.messages_replayed):
            counter.labels(account)
