"""An in-memory ``sync.Store`` for the drain's unit tests (modelled on procrastinate's ``InMemoryConnector``).

It keeps ``store.PostgresStore``'s contract, which ``tests/integration/test_store_contract.py`` runs against
both: a block's rows, the cursor and the run's counters land together or not at all; a block's
``gate.Ticket`` is settled only once that write landed; a quarantined block keeps its bytes and moves the
cursor past it (the same block again updates its row); the failure streak counts the same block failing
with the same error kind and a succeeded run ends it; the account's lock is held from ``begin_run`` to the
end of its context, and a run left open by a dead process is closed by the next ``begin_run``.

Failures are injected per call (``fail``): raised before the write (nothing landed) or after it (it
landed, the caller never heard: a lost answer, or ``Crash``, the process killed right after its commit).
Every write and every failure is a line of ``journal``, which a test shares with its fake API so that
one list shows the order of requests and commits.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator, Sequence

from sync_worker import gate, models, rows, status, store


class Crash(BaseException):
    """The worker process died here (SIGKILL): nothing of the run's own handling runs after it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    error: BaseException
    after: bool  # the write landed first


@dataclasses.dataclass(slots=True)
class Run:
    account: str
    outcome: str | None = None  # None: still open (or its process died)
    error: str | None = None


@dataclasses.dataclass(slots=True)
class Kept:
    """One ``sms_quarantine`` row."""

    account: str
    block: models.KeptBlock
    seen: int = 1


def token(value: str | None) -> str:
    """A cursor as the journal writes it: the token, or ``end`` after a final block."""
    return "end" if value is None else value


class MemoryStore:
    """``sync.Store`` in memory; ``holders`` are accounts another process has locked."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal: list[str] = [] if journal is None else journal
        self.cursor: dict[str, str | None] = {}
        # account -> (message_key, occurrence) -> message text, in commit order.
        self.history: dict[str, dict[tuple[bytes, int], str | None]] = collections.defaultdict(dict)
        self.kept: list[Kept] = []
        self.runs: dict[int, Run] = {}
        self.streaks: dict[str, tuple[tuple[str | None, str, str], int]] = {}
        self.holders: set[str] = set()
        self.partitions: list[dt.datetime] = []
        self._calls: collections.Counter[str] = collections.Counter()
        self._faults: dict[tuple[str, int], Fault] = {}
        self._ids = itertools.count(1)

    def fail(self, operation: str, error: BaseException, *, call: int = 1, after: bool = False) -> None:
        """The ``call``-th call of ``operation`` (counted over the store's life) raises ``error``."""
        self._faults[(operation, call)] = Fault(error, after)

    def _fault(self, operation: str) -> Fault | None:
        self._calls[operation] += 1
        fault = self._faults.get((operation, self._calls[operation]))
        if fault is not None and not fault.after:
            self.journal.append(f"{operation} failed: {type(fault.error).__name__}")
            raise fault.error
        return fault

    def _landed(self, fault: Fault | None, operation: str) -> None:
        if fault is not None:
            self.journal.append(f"{operation} landed, then {type(fault.error).__name__}")
            raise fault.error

    @contextlib.contextmanager
    def begin_run(self, account: str) -> Iterator[MemorySession]:
        self._landed(self._fault("begin_run"), "begin_run")
        if account in self.holders:
            yield MemorySession(self, account, None)
            return
        abandoned = [r for r in self.runs.values() if r.account == account and r.outcome is None]
        for r in abandoned:
            r.outcome, r.error = "abandoned", "its worker stopped before closing the run"
        run_id = next(self._ids)
        self.runs[run_id] = Run(account)
        self.holders.add(account)
        try:
            start = store.RunStart(run_id, self.cursor.get(account), len(abandoned))
            yield MemorySession(self, account, start)
        finally:
            # Whatever ends the session (a crash included) ends the connection, and with it the lock.
            self.holders.discard(account)

    def ensure_partitions(self, times: Sequence[dt.datetime]) -> None:
        self._landed(self._fault("ensure_partitions"), "ensure_partitions")
        self.partitions.extend(times)

    def stored(self, account: str) -> list[str | None]:
        """The texts of ``account``'s stored messages, in the order they were first stored."""
        return list(self.history[account].values())


class MemorySession:
    """``sync.Session`` of ``MemoryStore``."""

    def __init__(self, owner: MemoryStore, account: str, start: store.RunStart | None) -> None:
        self._s, self._account, self.start = owner, account, start

    def _run(self) -> Run:
        assert self.start is not None, "a write without a begun run"  # else a bug of the sync
        return self._s.runs[self.start.run_id]

    def lock_holder(self) -> status.LockHolder | None:
        self._s._landed(self._s._fault("lock_holder"), "lock_holder")
        return status.LockHolder("other-replica", 42, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 5.0)

    def commit_block(self, page: models.HistoryPage) -> store.BlockResult:
        fault = self._s._fault("commit_block")
        self._run()
        block = rows.build_block(page.account_name, page.messages)
        history = self._s.history[self._account]
        inserted = 0
        for key, occurrence, text in zip(block.message_key, block.occurrence, block.message, strict=True):
            if (key, occurrence) not in history:
                history[(key, occurrence)] = text
                inserted += 1
        self._s.cursor[self._account] = page.next
        self._s.journal.append(f"commit {len(block)} ->{token(page.next)}")
        if page.ticket is not None:
            page.ticket.committed(len(block))
        self._s._landed(fault, "commit_block")
        return store.BlockResult(len(block), inserted, len(block) - inserted, block.malformed)

    def quarantine_block(self, block: models.KeptBlock, ticket: gate.Ticket | None) -> store.QuarantineResult:
        fault = self._s._fault("quarantine_block")
        self._run()
        same = (block.body_sha256, block.request_token, block.next_token)
        for i, kept in enumerate(self._s.kept, start=1):
            if kept.account == self._account and same == (
                kept.block.body_sha256,
                kept.block.request_token,
                kept.block.next_token,
            ):
                kept.seen += 1
                quarantine_id, inserted = i, False
                break
        else:
            self._s.kept.append(Kept(self._account, block))
            quarantine_id, inserted = len(self._s.kept), True
        self._s.cursor[self._account] = block.next_token
        self._s.journal.append(f"quarantine ->{token(block.next_token)}")
        if ticket is not None:
            ticket.quarantined()
        self._s._landed(fault, "quarantine_block")
        return store.QuarantineResult(quarantine_id, inserted)

    def record_block_failure(
        self, *, request_token: str | None, body_sha256: str, error_kind: str, error: str
    ) -> int:
        fault = self._s._fault("record_block_failure")
        same = (request_token, body_sha256, error_kind)
        before = self._s.streaks.get(self._account)
        streak = before[1] + 1 if before is not None and before[0] == same else 1
        self._s.streaks[self._account] = (same, streak)
        self._s.journal.append(f"streak {streak}")
        self._s._landed(fault, "record_block_failure")
        return streak

    def clear_cursor(self, reason: str) -> None:
        fault = self._s._fault("clear_cursor")
        self._s.cursor[self._account] = None
        self._s.journal.append("clear cursor")
        self._s._landed(fault, "clear_cursor")

    def finish_run(self, outcome: str, error: str | None, *, clear_failure_streak: bool) -> None:
        fault = self._s._fault("finish_run")
        run = self._run()
        run.outcome, run.error = outcome, error
        if clear_failure_streak:
            self._s.streaks.pop(self._account, None)
        self._s.journal.append(f"finish {outcome}")
        self._s._landed(fault, "finish_run")
