"""Run one sync pass in this process against a simulator: real HTTP, real Postgres, fake sleeps."""

from __future__ import annotations

import collections
import threading

from sync_worker import app, client, config, outcomes, retry, simulator
from tests.reliability import crash


class Observer:
    """Counts what the client reports: one on_request per exchange, one on_retry per planned retry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int | None]] = collections.Counter()
        self.retries: list[tuple[str, str, float]] = []

    def on_request(self, operation: str, status: int | None, seconds: float) -> None:
        with self.lock:
            self.requests[(operation, status)] += 1

    def on_retry(self, operation: str, reason: str, wait: float) -> None:
        with self.lock:
            self.retries.append((operation, reason, wait))


def run_pass(
    sim: simulator.Simulator,
    db_url: str,
    accounts: tuple[str, ...],
    *,
    max_attempts: int = 8,
    read_timeout: float = 0.3,
) -> tuple[outcomes.PassResult, Observer, list[float]]:
    """One ``sync_once`` over ``accounts`` (sequentially, so fault order is deterministic)."""
    settings = config.load(crash.worker_env(sim, db_url, accounts, SYNC_CONCURRENCY="1"))
    observer = Observer()
    slept: list[float] = []
    cfg = client.ClientConfig(
        base_url=settings.base_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        username=settings.username,
        password=settings.password,
        timeout=(2.0, read_timeout),
        retry=retry.RetryPolicy(max_attempts=max_attempts, sleep=slept.append),
        allow_insecure_loopback=True,
        observer=observer,
    )
    api = client.ThingSpaceClient(cfg)
    try:
        result = app.sync_once(settings, api=api)
    finally:
        api.close()
    return result, observer, slept
