"""Runs that end promptly and clearly: a stop during a Retry-After wait, a paging loop, too many blocks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sync_worker import app, config, migrations, simulator
from tests.reliability import crash

ACCOUNT = "0252012345-00061"
ACCOUNTS = (ACCOUNT,)


class _StopOn429(crash.HookedSimulator):
    """Answers with the scripted 429 (Retry-After: 120) and sets ``stop_event`` once it has."""

    def __init__(self, config: simulator.SimConfig, stop: threading.Event) -> None:
        super().__init__(config)
        self.stop_event = stop

    def _serve(self, h: Any, kind: str, account: str | None, query: str, body: bytes) -> int:
        status = super()._serve(h, kind, account, query, body)
        if status == 429:
            self.stop_event.set()
        return status


@pytest.mark.timeout(60)
def test_stop_wakes_a_retry_after_wait(db_url: str) -> None:
    """SIGTERM's stop event ends a 120 s Retry-After wait at once: the run is interrupted, not asleep."""
    stop = threading.Event()
    sim = _StopOn429(crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable"), stop)
    sim.faults.retry_after = "120"
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=6))
        sim.faults.script("history", [200, 429])
        env = crash.worker_env(sim, db_url, ACCOUNTS, SYNC_RUN_BUDGET_SECONDS="600")
        settings = config.load(env)
        with app.connector(settings)() as conn:
            from sync_worker import migrations

            migrations.migrate(conn)
        # The default sleep (time.sleep) would hold this pass for 120 s; the timeout mark fails it.
        result = app.sync_once(settings, stop_event=stop)
    (account,) = result.accounts
    assert account.outcome == "interrupted", account
    assert account.blocks == 1 and crash.row_count(db_url) == 100


class _LoopingLocation(crash.HookedSimulator):
    """Every 202 names, as its next token, the very token its request carried (when it carried one)."""

    def _process(self, h: Any, kind: str, account: str | None, query: str, body: bytes) -> Any:
        status, reply, headers, after_write = super()._process(h, kind, account, query, body)
        if kind == "history" and status == 202 and query.startswith("next="):
            sent = query.removeprefix("next=")
            headers = [(n, v) for n, v in headers if n != "Location"]
            headers.append(("Location", f"/sms/{account}/history?next={sent}"))
        return status, reply, headers, after_write


def _migrated(settings: config.Settings) -> None:

    with app.connector(settings)() as conn:
        migrations.migrate(conn)


def test_a_block_naming_its_own_token_ends_the_run_clearly(db_url: str) -> None:
    """A 202 whose Location repeats the token just sent ends the run with PagingLoopError, not a loop."""
    sim = _LoopingLocation(crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable"))
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 450, seed=7))
        settings = config.load(crash.worker_env(sim, db_url, ACCOUNTS))
        _migrated(settings)
        result = app.sync_once(settings)
    (account,) = result.accounts
    assert (account.outcome, account.error_kind) == ("failed", "PagingLoopError"), account
    assert "very next token" in (account.error or "")
    assert account.blocks == 1 and result.exit_code == 1


def test_more_blocks_than_the_run_allows_end_the_run(db_url: str) -> None:
    """SYNC_MAX_BLOCKS_PER_RUN bounds one run; the next run resumes at the cursor and drains exactly."""
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 450, seed=8))
        settings = config.load(crash.worker_env(sim, db_url, ACCOUNTS, SYNC_MAX_BLOCKS_PER_RUN="2"))
        _migrated(settings)
        first = app.sync_once(settings)
        (account,) = first.accounts
        assert (account.outcome, account.error_kind, account.blocks) == ("failed", "PagingLoopError", 2)
        assert "SYNC_MAX_BLOCKS_PER_RUN" in (account.error or "")
        for _ in range(2):
            app.sync_once(settings)
        cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.exact, cmp
