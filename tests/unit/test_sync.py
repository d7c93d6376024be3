"""The per-account loop against an in-memory store and a scripted API (no database, no network)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from sync_worker import errors, models, status, store, sync

ACCOUNT = "0252012345-00001"


def page(n: int, token: str | None) -> models.HistoryPage:
    msgs = tuple(models.SMSMessage.from_wire({"message": f"m{n}-{i}"}) for i in range(3))
    return models.HistoryPage(ACCOUNT, msgs, token is not None, 202 if token else 200, token)


class Journal:
    """One ordered record of what the fake API and the fake store saw."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.cursor: str | None = None
        self.locked = True
        self.commit_error: BaseException | None = None
        self.finished: list[tuple[str, str | None]] = []
        self.failures: list[dict[str, Any]] = []


class FakeApi:
    """Serves ``blocks``; raising entries are raised when that request is made."""

    def __init__(self, journal: Journal, blocks: list[models.HistoryPage | BaseException]) -> None:
        self.journal = journal
        self.blocks = blocks
        self.sms = self
        self.calls: list[str | None] = []

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        self.calls.append(next)
        token = next
        for item in self.blocks:
            self.journal.events.append(f"request {token}")
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.next is None:
                return
            token = item.next


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Journal:
    j = Journal()

    def commit_block(conn: Any, run_id: int, p: models.HistoryPage) -> store.BlockResult:
        if j.commit_error is not None:
            raise j.commit_error
        j.events.append(f"commit {p.next}")
        j.cursor = p.next
        return store.BlockResult(len(p.messages), len(p.messages), 0, ())

    def clear_cursor(conn: Any, account: str, reason: str) -> None:
        j.events.append("clear")
        j.cursor = None

    def begin_run(conn: Any, account: str) -> store.RunStart | None:
        return store.RunStart(1, j.cursor) if j.locked else None

    def finish_run(
        conn: Any, run_id: int, outcome: str, error: str | None, *, clear_failure_streak: bool = False
    ) -> None:
        j.finished.append((outcome, error))
        if clear_failure_streak:
            j.failures.clear()

    monkeypatch.setattr(store, "begin_run", begin_run)
    monkeypatch.setattr(status, "lock_holder", lambda conn, account: None)
    monkeypatch.setattr(store, "commit_block", commit_block)
    monkeypatch.setattr(store, "clear_cursor", clear_cursor)
    monkeypatch.setattr(store, "finish_run", finish_run)

    def record_block_failure(conn: Any, account: str, **block: Any) -> int:
        j.failures.append(block)
        return sum(1 for f in j.failures if f == block)

    monkeypatch.setattr(store, "record_block_failure", record_block_failure)
    return j


class FakeConnection:
    # Closed already as far as db.session can tell: nothing to unlock on the way out.
    closed = True

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


def run(api: FakeApi, **kwargs: Any) -> sync.AccountResult:
    return sync.sync_account(api, ACCOUNT, FakeConnection, **kwargs)  # type: ignore[arg-type]


def test_each_block_is_committed_before_the_request_that_acknowledges_it(journal: Journal) -> None:
    """The request carrying block N's token is made only after block N was committed."""
    api = FakeApi(journal, [page(1, "t1"), page(2, "t2"), page(3, None)])
    result = run(api)
    assert result.outcome == "succeeded"
    assert journal.events == [
        "request None",
        "commit t1",
        "request t1",
        "commit t2",
        "request t2",
        "commit None",
    ]
    assert (result.blocks, result.received, result.inserted) == (3, 9, 9)
    assert journal.finished == [("succeeded", None)]


def test_failed_commit_sends_no_acknowledgement(journal: Journal) -> None:
    """When the commit fails, the next request (which would acknowledge the block) is never made."""
    journal.commit_error = errors.DatabaseUnavailableError("gone")
    api = FakeApi(journal, [page(1, "t1"), page(2, None)])
    result = run(api)
    assert result.outcome == "failed"
    assert result.error_kind == "DatabaseUnavailableError"
    assert journal.events == ["request None"]


def test_rejected_stored_cursor_restarts_once_at_head(journal: Journal) -> None:
    """InvalidCursorError on the first request clears the cursor and restarts at the head once."""
    journal.cursor = "stale"
    api = FakeApi(journal, [errors.InvalidCursorError("bad", status=400)])

    original = api.iter_history_blocks

    def second_time_ok(
        account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        if next is None:
            api.blocks = [page(1, None)]
        return original(account_name, next, deadline=deadline)

    api.iter_history_blocks = second_time_ok  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        result = run(api)
    assert result.outcome == "succeeded"
    assert api.calls == ["stale", None]
    assert "clear" in journal.events
    assert any(e["event"] == "cursor_rejected" and e["log_level"] == "warning" for e in logs)


def test_token_rejected_mid_drain_restarts_at_head(journal: Journal) -> None:
    """A token rejected mid-drain (a single-use token re-sent after a lost response) restarts at the head."""
    api = FakeApi(journal, [page(1, "t1"), errors.InvalidCursorError("bad", status=400)])
    original = api.iter_history_blocks

    def head_then_done(
        account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        if len(api.calls) == 1:
            api.blocks = [page(2, None)]
        return original(account_name, next, deadline=deadline)

    api.iter_history_blocks = head_then_done  # type: ignore[method-assign]
    result = run(api)
    assert result.outcome == "succeeded"
    assert api.calls == [None, None]
    assert journal.events == [
        "request None",
        "commit t1",
        "request t1",
        "clear",
        "request None",
        "commit None",
    ]


def test_every_token_rejected_fails_after_bounded_restarts(journal: Journal) -> None:
    """A platform that rejects every token makes the run fail after a few restarts instead of looping."""
    api = FakeApi(journal, [page(1, "t1"), errors.InvalidCursorError("bad", status=400)])
    result = run(api)
    assert result.outcome == "failed"
    assert result.error_kind == "InvalidCursorError"
    assert journal.events.count("clear") == sync._MAX_CURSOR_RESTARTS
    assert journal.cursor == "t1"


def test_locked_account_is_skipped_without_requests(journal: Journal) -> None:
    """Another holder of the account lock means skipped_locked and no API call."""
    journal.locked = False
    api = FakeApi(journal, [page(1, None)])
    result = run(api)
    assert result.outcome == "skipped_locked"
    assert api.calls == []


def test_stop_event_already_set_makes_no_request(journal: Journal) -> None:
    """A run that starts after the stop event was set ends as interrupted without touching the API."""
    stop = threading.Event()
    stop.set()
    api = FakeApi(journal, [page(1, None)])
    result = run(api, stop_event=stop)
    assert result.outcome == "interrupted"
    assert api.calls == []
    assert journal.finished == [("interrupted", None)]


def test_guard_trip_and_refused_login_map_to_exit_4(journal: Journal) -> None:
    """A tripped guard is outcome guard_tripped; a pass containing it (or a refused login) exits 4."""
    tripped = run(FakeApi(journal, [errors.LoginGuardTrippedError("tripped")]))
    refused = run(FakeApi(journal, [errors.LoginFailedError("refused", status=400)]))
    assert tripped.outcome == "guard_tripped"
    assert refused.outcome == "failed"
    assert sync.PassResult([tripped]).exit_code == 4
    assert sync.PassResult([refused, sync.AccountResult("b", "succeeded")]).exit_code == 4


def test_bug_in_a_run_is_contained(journal: Journal) -> None:
    """An unexpected exception ends that account's run as failed instead of propagating."""
    journal.commit_error = KeyError("bug")
    result = run(FakeApi(journal, [page(1, None)]))
    assert result.outcome == "failed"
    assert result.error_kind == "KeyError"


def test_rate_limit_beyond_budget_is_marked_deferred(journal: Journal) -> None:
    """A RateLimitedError whose Retry-After exceeds the remaining budget is reported as deferred."""
    now = [100.0]
    error = errors.RateLimitedError("rate limited", status=429, retry_after=600)
    with structlog.testing.capture_logs() as logs:
        result = run(FakeApi(journal, [page(1, "t1"), error]), deadline=130.0, clock=lambda: now[0])
    assert result.outcome == "failed"
    assert result.error is not None
    assert result.error.startswith("deferred")
    assert [e.get("deferred") for e in logs if e["event"] == "account_run"] == [True]


def test_unavailable_with_retry_after_beyond_budget_is_also_deferred(journal: Journal) -> None:
    """A 503 whose Retry-After exceeds the remaining budget ends the run as deferred too, cursor kept."""
    error = errors.ApiTransientError("server error", status=503, retry_after=600)
    result = run(FakeApi(journal, [page(1, "t1"), error]), deadline=130.0, clock=lambda: 100.0)
    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("deferred")
    assert journal.cursor == "t1"


def test_one_log_event_per_block_and_one_per_run(journal: Journal) -> None:
    """A drain logs exactly one block_committed per block and one account_run with the issue's fields."""
    api = FakeApi(journal, [page(1, "t1"), page(2, "t2"), page(3, None)])
    with structlog.testing.capture_logs() as logs:
        run(api)
    assert [e["event"] for e in logs] == ["block_committed"] * 3 + ["account_run"]
    (summary,) = [e for e in logs if e["event"] == "account_run"]
    assert {"blocks", "messages", "inserted", "replays", "duration", "outcome"} <= set(summary)
    assert (summary["blocks"], summary["messages"], summary["outcome"]) == (3, 9, "succeeded")


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        (["succeeded", "skipped_locked"], 0),
        ([], 0),
        (["succeeded", "failed"], 1),
        (["interrupted"], 1),
        (["succeeded", "guard_tripped", "failed"], 4),
    ],
)
def test_exit_codes(outcomes: list[Any], code: int) -> None:
    """0 when every account succeeded or belongs to another replica, 4 for auth, else 1."""
    result = sync.PassResult([sync.AccountResult(f"a{i}", o) for i, o in enumerate(outcomes)])
    assert result.exit_code == code
    assert result.summary()["exit_code"] == code


def test_summary_totals() -> None:
    """The pass summary adds up the per-account counters and lists the failed accounts."""
    result = sync.PassResult(
        [
            sync.AccountResult("a", "succeeded", blocks=2, received=150, inserted=140, replays=10),
            sync.AccountResult("b", "failed", blocks=1, received=100, inserted=100, error="x"),
        ]
    )
    summary = result.summary()
    assert summary["received"] == 250
    assert summary["inserted"] == 240
    assert summary["replays"] == 10
    assert summary["outcomes"] == {"succeeded": 1, "failed": 1}
    assert summary["failed"] == ["b"]
