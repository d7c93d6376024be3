"""Group commit: items that arrive together are written in one transaction, each caller answered
only after its own item is committed.

A durable commit costs a WAL flush, and the flush, not the insert, bounds how many single-item
transactions a database takes per second. Here the callers (the receiver's request threads) put
their item in a bounded queue and wait on a lock of their own; a committer thread takes
everything queued (up to ``max_batch``), hands it to ``write`` (one transaction), and wakes each
caller with its own result once ``write`` has returned, i.e. once the commit is done. Whatever
arrives meanwhile queues up for the next transaction, so the batches grow with the load and a
lone item is never delayed by a timer.

When ``write`` fails for the batch, ``isolate(error)`` says whether one item could be the cause
(a value the database refuses, a bug on one item's path): then every item is written again in a
transaction of its own, so one bad item fails alone and its neighbours are committed. Otherwise
(the database down or busy: every item would fail the same way, one after the other) every
caller of the batch gets the error at once, and so does every caller queued behind it: they
would wait as long again for the same answer.

A full queue, or no commit within ``wait_timeout``, raises ``Saturated`` at once: the caller
answers "try again" instead of piling up. An item whose caller gave up is skipped if it was not
taken yet; one already being written may still be committed (a later retry of it must be
idempotent, which the receiver's is: the same body and messages are absorbed by unique keys).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Items a transaction takes at most: the transaction stays short (it holds row locks and a
# connection) and one failed batch re-writes a bounded number of items one by one.
DEFAULT_MAX_BATCH: Final = 128


class Saturated(Exception):
    """The item was not committed in time, or not queued at all: the caller should say "retry later".

    ``kind``: ``queue_full`` (not queued) or ``commit_timeout`` (queued, not committed in time;
    it may still be, later).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclasses.dataclass(eq=False)
class _Waiter(Generic[Item, Result]):
    item: Item
    # Held until the item is settled; its caller waits by acquiring it (a bare lock: an Event's
    # condition costs a lock, a waiter list and a notify per item, for one waiter).
    done: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    result: Result | None = None
    error: BaseException | None = None
    # Set under the committer's lock: taken into a batch / given up by its caller / answered.
    taken: bool = False
    abandoned: bool = False
    settled: bool = False
    # For callers that do not block (``submit``): called from the committer thread once settled.
    notify: Callable[[list[_Waiter[Item, Result]]], None] | None = None

    def __post_init__(self) -> None:
        self.done.acquire()

    def outcome(self) -> Result:
        """The settled item's result, or what writing it raised."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set whenever error is not


Ticket = _Waiter


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """What one transaction held, for the caller's metrics: its size and whether it committed."""

    size: int
    committed: bool
    isolated: bool  # the batch failed and its items were written one by one


class GroupCommitter(Generic[Item, Result]):
    """Commits queued items in shared transactions; ``commit(item)`` returns once ``item`` is committed.

    ``write(items)`` writes and commits all of ``items`` in one transaction and returns their
    results in order, or raises. ``threads`` committers may run transactions at the same time
    (each takes its own batch), overlapping one batch's commit with the next one's statements.
    ``observe`` is called after every transaction attempt (metrics).
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        isolate: Callable[[BaseException], bool],
        max_queue: int,
        wait_timeout: float,
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int = 1,
        observe: Callable[[Batch], None] = lambda batch: None,
        name: str = "group-commit",
    ) -> None:
        if max_queue < 1 or max_batch < 1 or threads < 1:
            raise ValueError("max_queue, max_batch and threads must be at least 1")
        self._write = write
        self._isolate = isolate
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._wait_timeout = wait_timeout
        self._observe = observe
        self._name = name
        self._count = threads
        self._queue: collections.deque[_Waiter[Item, Result]] = collections.deque()
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        # Callers whose item is queued or being written, not answered yet.
        self._waiting = 0

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
                for i in range(self._count)
            ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the committer threads."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def queued(self) -> int:
        """Items waiting for a transaction (not counting those being written)."""
        with self._lock:
            return len(self._queue)

    def waiting(self) -> int:
        """Items queued or being written, whose callers have not been answered yet."""
        with self._lock:
            return self._waiting

    def commit(self, item: Item) -> Result:
        """Queue ``item``, wait until its transaction committed, return its result.

        Raises what writing it raised, or ``Saturated`` (queue full, or no commit in time).
        """
        waiter = self._enqueue(_Waiter(item))
        if not waiter.done.acquire(timeout=self._wait_timeout):
            self.give_up(waiter)
        return waiter.outcome()

    @property
    def wait_timeout(self) -> float:
        """How long a caller waits for its commit before it gives up (``give_up``)."""
        return self._wait_timeout

    def give_up(self, ticket: Ticket[Item, Result]) -> None:
        """The caller waited ``wait_timeout`` for ``ticket``: raises ``Saturated`` (commit_timeout)
        unless it was settled meanwhile (its outcome then stands)."""
        if self.abandon(ticket):
            raise Saturated("commit_timeout", f"not committed within {self._wait_timeout:g} s")

    def submit(
        self, item: Item, notify: Callable[[list[Ticket[Item, Result]]], None]
    ) -> Ticket[Item, Result]:
        """Queue ``item`` without waiting: ``notify`` gets the settled tickets of a transaction at
        once (one call per batch, from a committer thread, so it must not block). A caller that stops
        waiting calls ``abandon``. Raises ``Saturated`` (queue full) at once."""
        return self._enqueue(_Waiter(item, notify=notify))

    def abandon(self, ticket: Ticket[Item, Result]) -> bool:
        """Give up waiting for ``ticket``: False if it was settled already (its outcome stands)."""
        with self._lock:
            if ticket.settled:
                return False
            ticket.abandoned = True
            if not ticket.taken:
                # Never to be written: it leaves the queue as it is skipped.
                self._waiting -= 1
            return True

    def _enqueue(self, waiter: _Waiter[Item, Result]) -> _Waiter[Item, Result]:
        with self._lock:
            if not self._threads or self._stopping:
                raise Saturated("queue_full", "the committer is not running")
            if len(self._queue) >= self._max_queue:
                raise Saturated("queue_full", f"{self._max_queue} items already wait for a commit")
            self._queue.append(waiter)
            self._waiting += 1
            self._lock.notify()
        return waiter

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if not self._queue:
                    return
                batch: list[_Waiter[Item, Result]] = []
                while self._queue and len(batch) < self._max_batch:
                    waiter = self._queue.popleft()
                    if not waiter.abandoned:
                        waiter.taken = True
                        batch.append(waiter)
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Waiter[Item, Result]]) -> None:
        try:
            results = self._write([w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(batch)} items written, {len(results)} results")
        except Exception as exc:  # handed to every waiter: this thread must go on
            if len(batch) > 1 and self._isolate(exc):
                self._observe(Batch(len(batch), committed=False, isolated=True))
                for waiter in batch:
                    self._commit([waiter])
                return
            # The database is out of reach or busy: the callers queued meanwhile would each wait
            # as long again for the same answer, so they get it now.
            with self._lock:
                behind = [w for w in self._queue if not w.abandoned]
                self._queue.clear()
            self._observe(Batch(len(batch), committed=False, isolated=False))
            self._settle([(waiter, None, exc) for waiter in [*batch, *behind]])
            return
        self._observe(Batch(len(batch), committed=True, isolated=False))
        self._settle([(waiter, result, None) for waiter, result in zip(batch, results, strict=True)])

    def _settle(
        self, answers: list[tuple[_Waiter[Item, Result], Result | None, BaseException | None]]
    ) -> None:
        """Answer every waiter of ``answers`` (waiter, result, error), under one take of the lock;
        then the non-blocking callers, one ``notify`` call for all of a batch's that share it."""
        notices: dict[Callable[[list[_Waiter[Item, Result]]], None], list[_Waiter[Item, Result]]] = {}
        with self._lock:
            for waiter, result, error in answers:
                waiter.result, waiter.error = result, error
                waiter.settled = True
                waiter.done.release()
                if waiter.notify is not None:
                    notices.setdefault(waiter.notify, []).append(waiter)
            self._waiting -= len(answers)
        for notify, waiters in notices.items():
            notify(waiters)
