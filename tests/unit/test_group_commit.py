"""group_commit.GroupCommitter with an in-memory ``write`` (no database): batching, the split of a
failed batch, fail-fast behind a database failure, the queue bound and the wait bound."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator, Sequence

import pytest

from sync_worker import group_commit
from tests.reliability import crash


class Bad(Exception):
    """One item's own problem (isolate says yes)."""


class Down(Exception):
    """The store's problem (isolate says no)."""


class Store:
    """Commits lists of items; the first transaction can be held open until ``release``."""

    def __init__(self, *, hold_first: bool = False, down: bool = False) -> None:
        self.transactions: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.hold_first = hold_first
        self.down = down

    def write(self, items: Sequence[str]) -> list[str]:
        if self.hold_first and not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30)
        if self.down:
            raise Down("store unreachable")
        if "poison" in items:
            raise Bad("refused")
        self.transactions.append(list(items))
        return [f"stored {i}" for i in items]


def committer(store: Store, **kw: object) -> group_commit.GroupCommitter[str, str]:
    options: dict[str, object] = {"max_queue": 100, "wait_timeout": 30.0, **kw}
    c: group_commit.GroupCommitter[str, str] = group_commit.GroupCommitter(
        store.write,
        isolate=lambda exc: isinstance(exc, Bad),
        **options,  # type: ignore[arg-type]
    )
    c.start()
    return c


@pytest.fixture
def callers() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        yield pool


def outcome(future: concurrent.futures.Future[str]) -> str:
    try:
        return future.result(timeout=30)
    except Exception as exc:
        return type(exc).__name__


def test_items_queued_during_a_transaction_share_the_next_one(
    callers: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """While one transaction is open, 10 callers queue; they are then committed together, each getting
    its own result."""
    store = Store(hold_first=True)
    c = committer(store)
    first = callers.submit(c.commit, "a")
    assert store.entered.wait(30)
    rest = [callers.submit(c.commit, f"b{i}") for i in range(10)]
    crash.wait_until(lambda: c.queued() == 10, 30, "10 queued")
    store.gate.set()
    assert first.result(30) == "stored a"
    assert [f.result(30) for f in rest] == [f"stored b{i}" for i in range(10)]
    assert store.transactions == [["a"], [f"b{i}" for i in range(10)]]
    c.stop()


def test_a_batch_failing_for_one_item_is_split_and_only_that_item_fails(
    callers: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """A batch of 5 with a poison item: the 4 others are committed one by one, the poison gets its error."""
    store = Store(hold_first=True)
    seen: list[group_commit.Batch] = []
    c = committer(store, observe=seen.append)
    first = callers.submit(c.commit, "a")
    assert store.entered.wait(30)
    batch = [callers.submit(c.commit, item) for item in ("b", "c", "poison", "d", "e")]
    crash.wait_until(lambda: c.queued() == 5, 30, "5 queued")
    store.gate.set()
    assert first.result(30) == "stored a"
    assert [outcome(f) for f in batch] == ["stored b", "stored c", "Bad", "stored d", "stored e"]
    assert group_commit.Batch(5, committed=False, isolated=True) in seen
    c.stop()


def test_a_store_failure_fails_the_batch_and_everyone_queued_behind_it_at_once(
    callers: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """The store down: the batch being written and the 6 callers queued behind it all get the error,
    and nothing is written again one by one."""
    store = Store(hold_first=True, down=True)
    seen: list[group_commit.Batch] = []
    c = committer(store, observe=seen.append)
    first = callers.submit(c.commit, "a")
    assert store.entered.wait(30)
    behind = [callers.submit(c.commit, f"b{i}") for i in range(6)]
    crash.wait_until(lambda: c.queued() == 6, 30, "6 queued")
    store.gate.set()
    assert [outcome(f) for f in [first, *behind]] == ["Down"] * 7
    assert seen == [group_commit.Batch(1, committed=False, isolated=False)]
    c.stop()


def test_a_full_queue_is_refused_at_once(callers: concurrent.futures.ThreadPoolExecutor) -> None:
    """With 2 items queued and a bound of 2, a third caller gets Saturated(queue_full) without waiting."""
    store = Store(hold_first=True)
    c = committer(store, max_queue=2)
    callers.submit(c.commit, "a")
    assert store.entered.wait(30)
    queued = [callers.submit(c.commit, f"b{i}") for i in range(2)]
    crash.wait_until(lambda: c.queued() == 2, 30, "2 queued")
    with pytest.raises(group_commit.Saturated) as refused:
        c.commit("c")
    assert refused.value.kind == "queue_full"
    store.gate.set()
    assert [f.result(30) for f in queued] == ["stored b0", "stored b1"]
    c.stop()


def test_a_caller_not_committed_in_time_gives_up_and_its_item_is_never_written(
    callers: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """A caller queued behind a stuck transaction gets Saturated(commit_timeout) after its wait bound;
    its item, not taken yet, is then skipped (written by nobody)."""
    store = Store(hold_first=True)
    c = committer(store, wait_timeout=0.2)
    first = callers.submit(c.commit, "a")
    assert store.entered.wait(30)
    with pytest.raises(group_commit.Saturated) as late:
        c.commit("late")
    assert late.value.kind == "commit_timeout"
    # It too waits longer than 0.2 s while the store holds its transaction: it gives up before the
    # store goes on (waiting for that, not racing it: a caller that finds its item committed when
    # it looks takes the result). Its item was taken, so it is committed all the same.
    assert isinstance(first.exception(30), group_commit.Saturated)
    store.gate.set()
    assert c.commit("next") == "stored next"
    assert store.transactions == [["a"], ["next"]]
    c.stop()


def test_submitted_items_are_notified_once_per_transaction_after_it_committed() -> None:
    """Callers that do not block: 5 items queued behind an open transaction are committed together,
    and their notify is called once, with the 5 tickets, each holding its own result."""
    store = Store(hold_first=True)
    c = committer(store)
    calls: list[list[str]] = []
    done = threading.Event()

    def notify(tickets: list[group_commit.Ticket[str, str]]) -> None:
        # Called after the commit: the transaction is in the store already.
        assert [t.item for t in tickets] in store.transactions
        calls.append([t.outcome() for t in tickets])
        if len(calls) == 2:
            done.set()

    c.submit("a", notify)
    assert store.entered.wait(30)
    tickets = [c.submit(f"b{i}", notify) for i in range(5)]
    crash.wait_until(lambda: c.queued() == 5, 30, "5 queued")
    store.gate.set()
    assert done.wait(30)
    assert calls == [["stored a"], [f"stored b{i}" for i in range(5)]]
    assert [t.outcome() for t in tickets] == [f"stored b{i}" for i in range(5)]
    assert c.waiting() == 0
    c.stop()


def test_an_abandoned_ticket_not_taken_yet_is_never_written_and_a_settled_one_keeps_its_outcome() -> None:
    """abandon() before a transaction took the item: True, the item is skipped; after it was
    settled: False, and its result stands."""
    store = Store(hold_first=True)
    c = committer(store)
    settled = threading.Event()
    first = c.submit("a", lambda tickets: settled.set())
    assert store.entered.wait(30)
    late = c.submit("late", lambda tickets: None)
    assert c.abandon(late) is True
    store.gate.set()
    assert settled.wait(30)
    assert c.abandon(first) is False
    assert first.outcome() == "stored a"
    assert c.commit("next") == "stored next"
    assert store.transactions == [["a"], ["next"]]
    assert c.waiting() == 0
    c.stop()
