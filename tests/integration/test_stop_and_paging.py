"""Runs that end promptly and clearly: a stop during a Retry-After wait, a paging loop, too many blocks."""

from __future__ import annotations

import threading

import pytest

from sync_worker import app, config, migrations, simulator
from tests.reliability import crash

ACCOUNT = "0252012345-00061"
ACCOUNTS = (ACCOUNT,)


@pytest.mark.timeout(60)
def test_stop_wakes_a_retry_after_wait(db_url: str) -> None:
    """SIGTERM's stop event ends a 120 s Retry-After wait at once: the run is interrupted, not asleep."""
    stop = threading.Event()
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )
    # Set once the scripted 429 (Retry-After: 120) is on the wire, so the worker is already waiting.
    sim.hooks.answered = lambda _request, status: stop.set() if status == 429 else None
    sim.faults.retry_after = "120"
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=6))
        sim.faults.script("history", [200, 429])
        env = crash.worker_env(sim, db_url, ACCOUNTS, SYNC_RUN_BUDGET_SECONDS="600")
        settings = config.load(env)
        with app.connector(settings)() as conn:
            migrations.migrate(conn)
        # The default sleep (time.sleep) would hold this pass for 120 s; the timeout mark fails it.
        result = app.sync_once(settings, stop_event=stop)
    (account,) = result.accounts
    assert account.outcome == "interrupted", account
    assert account.blocks == 1 and crash.row_count(db_url) == 100


def _repeat_sent_token(request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
    """A ``hooks.rewrite``: every 202 names, as its next token, the very token its request carried."""
    if request.kind == "history" and answer.status == 202 and request.query.startswith("next="):
        sent = request.query.removeprefix("next=")
        return answer.with_header("Location", f"/sms/{request.account}/history?next={sent}")
    return None


def _migrated(settings: config.Settings) -> None:

    with app.connector(settings)() as conn:
        migrations.migrate(conn)


def test_a_block_naming_its_own_token_ends_the_run_clearly(db_url: str) -> None:
    """A 202 whose Location repeats the token just sent ends the run with PagingLoopError, not a loop."""
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )
    sim.hooks.rewrite = _repeat_sent_token
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
