"""The per-account loop against the in-memory store and a scripted API (no database, no network).

The drain's acknowledgement rules are the table of ``test_drain_rules.py``; these are the rest."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import structlog

from sync_worker import errors, models, outcomes, sync
from tests import fakes, memory_store

ACCOUNT = "0252012345-00001"


def b(name: str, next_token: str | None) -> models.HistoryPage:
    return fakes.block(ACCOUNT, name, next_token, size=3)


@pytest.fixture
def journal() -> list[str]:
    """The shared record of requests (the scripted API) and writes (the in-memory store), in order."""
    return []


@pytest.fixture
def mem(journal: list[str]) -> memory_store.MemoryStore:
    return memory_store.MemoryStore(journal)


def api(journal: list[str], *answers: fakes.Answer) -> fakes.ScriptedHistory:
    return fakes.ScriptedHistory(journal, answers)


def run(
    history: fakes.ScriptedHistory, mem: memory_store.MemoryStore, **kwargs: Any
) -> outcomes.AccountResult:
    return sync.sync_account(history, ACCOUNT, mem, **kwargs)


def test_counts_and_the_finished_run(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """A drain counts its blocks and messages and closes its run as succeeded (the run's row says so)."""
    result = run(api(journal, b("b1", "t1"), b("b2", "t2"), b("b3", None)), mem)
    assert result.outcome == "succeeded"
    assert (result.blocks, result.received, result.inserted, result.replays) == (3, 9, 9, 0)
    assert [(r.outcome, r.error) for r in mem.runs.values()] == [("succeeded", None)]
    assert mem.cursor[ACCOUNT] is None


def test_replayed_block_counts_as_replays(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """A block served again after a crash past its commit is absorbed: replays, no new rows."""
    mem.fail("commit_block", memory_store.Crash(), call=1, after=True)
    history = api(journal, b("b1", None), b("b1", None))
    with pytest.raises(memory_store.Crash):
        run(history, mem)
    mem.cursor[ACCOUNT] = None  # the platform still holds the final block: served from the head again
    again = run(history, mem)
    assert (again.outcome, again.received, again.inserted, again.replays) == ("succeeded", 3, 0, 3)
    assert len(mem.stored(ACCOUNT)) == 3


def test_rejected_stored_cursor_restarts_once_at_head(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """InvalidCursorError on the first request clears the cursor and restarts at the head once."""
    mem.cursor[ACCOUNT] = "stale"
    history = api(journal, errors.InvalidCursorError("bad", status=400), b("b1", None))
    with structlog.testing.capture_logs() as logs:
        result = run(history, mem)
    assert result.outcome == "succeeded"
    assert history.calls == ["stale", None]
    assert journal[:3] == ["GET stale", "clear cursor", "GET head"]
    assert [e["token"] for e in logs if e["event"] == "cursor_rejected" and e["log_level"] == "warning"] == [
        "stored"
    ]


def test_every_token_rejected_fails_after_bounded_restarts(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """A platform that rejects every token makes the run fail after a few restarts instead of looping."""
    rejected = errors.InvalidCursorError("bad", status=400)
    answers: list[fakes.Answer] = [b("b1", "t1"), rejected]
    history = api(journal, *answers * (sync._MAX_CURSOR_RESTARTS + 1))
    result = run(history, mem)
    assert result.outcome == "failed"
    assert result.error_kind == "InvalidCursorError"
    assert journal.count("clear cursor") == sync._MAX_CURSOR_RESTARTS
    assert mem.cursor[ACCOUNT] == "t1"


def test_locked_account_is_skipped_without_requests(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """Another holder of the account lock means skipped_locked, no API call, and the holder named."""
    mem.holders.add(ACCOUNT)
    history = api(journal, b("b1", None))
    result = run(history, mem)
    assert result.outcome == "skipped_locked"
    assert history.calls == []
    assert result.error is not None and "other-replica:42" in result.error
    assert mem.runs == {}


def test_abandoned_run_is_closed_by_the_next(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """A run its process died in is closed (and logged) by the account's next run."""
    mem.fail("commit_block", memory_store.Crash(), call=1)
    history = api(journal, b("b1", None), b("b1", None))
    with pytest.raises(memory_store.Crash):
        run(history, mem)
    with structlog.testing.capture_logs() as logs:
        assert run(history, mem).outcome == "succeeded"
    assert [r.outcome for r in mem.runs.values()] == ["abandoned", "succeeded"]
    assert [e["runs"] for e in logs if e["event"] == "abandoned_runs_closed"] == [1]


def test_stop_event_already_set_makes_no_request(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """A run that starts after the stop event was set ends as interrupted without touching the API."""
    stop = threading.Event()
    stop.set()
    history = api(journal, b("b1", None))
    result = run(history, mem, stop_event=stop)
    assert result.outcome == "interrupted"
    assert history.calls == []
    assert journal == ["finish interrupted"]


def test_guard_trip_and_refused_login_map_to_exit_4(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """A tripped guard is outcome guard_tripped; a pass containing it (or a refused login) exits 4."""
    tripped = run(api(journal, errors.LoginGuardTrippedError("tripped")), mem)
    refused = run(api(journal, errors.LoginFailedError("refused", status=400)), mem)
    assert tripped.outcome == "guard_tripped"
    assert refused.outcome == "failed"
    assert outcomes.PassResult([tripped]).exit_code == 4
    assert outcomes.PassResult([refused, outcomes.AccountResult("b", "succeeded")]).exit_code == 4


def test_bug_in_a_run_is_contained(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """An unexpected exception ends that account's run as failed instead of propagating."""
    mem.fail("commit_block", KeyError("bug"))
    result = run(api(journal, b("b1", None)), mem)
    assert result.outcome == "failed"
    assert result.error_kind == "KeyError"


def test_run_that_cannot_begin_is_not_begun(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """No connection (begin_run fails): the run fails with begun=False and the API is never asked."""
    mem.fail("begin_run", errors.DatabaseUnavailableError("database unavailable"))
    history = api(journal, b("b1", None))
    result = run(history, mem)
    assert (result.outcome, result.begun, result.error_kind) == ("failed", False, "DatabaseUnavailableError")
    assert history.calls == []


def test_rate_limit_beyond_budget_is_marked_deferred(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """A RateLimitedError whose Retry-After exceeds the remaining budget is reported as deferred."""
    now = [100.0]
    error = errors.RateLimitedError("rate limited", status=429, retry_after=600)
    with structlog.testing.capture_logs() as logs:
        result = run(api(journal, b("b1", "t1"), error), mem, deadline=130.0, clock=lambda: now[0])
    assert result.outcome == "failed"
    assert result.error is not None
    assert result.error.startswith("deferred")
    assert [e.get("deferred") for e in logs if e["event"] == "account_run"] == [True]


def test_unavailable_with_retry_after_beyond_budget_is_also_deferred(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """A 503 whose Retry-After exceeds the remaining budget ends the run as deferred too, cursor kept."""
    error = errors.ApiTransientError("server error", status=503, retry_after=600)
    result = run(api(journal, b("b1", "t1"), error), mem, deadline=130.0, clock=lambda: 100.0)
    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("deferred")
    assert mem.cursor[ACCOUNT] == "t1"


def test_one_log_event_per_block_and_one_per_run(journal: list[str], mem: memory_store.MemoryStore) -> None:
    """A drain logs exactly one block_committed per block and one account_run with the issue's fields."""
    with structlog.testing.capture_logs() as logs:
        run(api(journal, b("b1", "t1"), b("b2", "t2"), b("b3", None)), mem)
    assert [e["event"] for e in logs] == ["block_committed"] * 3 + ["account_run"]
    (summary,) = [e for e in logs if e["event"] == "account_run"]
    assert {"blocks", "messages", "inserted", "replays", "duration", "outcome"} <= set(summary)
    assert (summary["blocks"], summary["messages"], summary["outcome"]) == (3, 9, "succeeded")


def test_run_accounts_prepares_partitions_then_runs_each(
    journal: list[str], mem: memory_store.MemoryStore
) -> None:
    """A pass asks the store for this month's and next month's partitions, then runs every account."""
    history = api(journal, b("b1", None))
    (result,) = sync.run_accounts(history, [ACCOUNT], mem, concurrency=2, budget_seconds=60.0)
    assert result.outcome == "succeeded"
    assert len(mem.partitions) == 2


@pytest.mark.parametrize(
    ("kinds", "code"),
    [
        (["succeeded", "skipped_locked"], 0),
        ([], 0),
        (["succeeded", "failed"], 1),
        (["interrupted"], 1),
        (["succeeded", "guard_tripped", "failed"], 4),
    ],
)
def test_exit_codes(kinds: list[Any], code: int) -> None:
    """0 when every account succeeded or belongs to another replica, 4 for auth, else 1."""
    result = outcomes.PassResult([outcomes.AccountResult(f"a{i}", o) for i, o in enumerate(kinds)])
    assert result.exit_code == code
    assert result.summary()["exit_code"] == code


def test_summary_totals() -> None:
    """The pass summary adds up the per-account counters and lists the failed accounts."""
    result = outcomes.PassResult(
        [
            outcomes.AccountResult("a", "succeeded", blocks=2, received=150, inserted=140, replays=10),
            outcomes.AccountResult("b", "failed", blocks=1, received=100, inserted=100, error="x"),
        ]
    )
    summary = result.summary()
    assert summary["received"] == 250
    assert summary["inserted"] == 240
    assert summary["replays"] == 10
    assert summary["outcomes"] == {"succeeded": 1, "failed": 1}
    assert summary["failed"] == ["b"]
