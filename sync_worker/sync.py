"""Sync one account's SMS history queue into the database (a ``Store``); one pass over all accounts.

The history endpoint is a queue: the request that carries block N's ``next``
token acknowledges (dequeues) block N. So a block's rows and its token are
committed in one transaction *before* the iterator is asked for block N+1, and
the iterator sends the token only through the acknowledgement gate
(``gate.release``), which lets it out once ``store.commit_block`` or
``store.quarantine_block`` settled the block's ticket. A crash between the
commit and that request only replays block N, which the idempotent upsert absorbs.

A ``next`` token the API rejects (a stale stored one, or a single-use token
re-sent by a retry after a lost response) clears the stored cursor with a
warning and restarts at the head of the queue: every block such a token could
acknowledge is committed already. At most ``_MAX_CURSOR_RESTARTS`` per run.

The database is a ``Store``: ``store.PostgresStore`` in production, an in-memory fake in the unit
tests (``tests/unit/test_drain_rules.py`` holds these rules as a table). What a run and a pass end
as, and what each outcome means: ``outcomes``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Protocol

import structlog

from sync_worker import config, errors, gate, logs, models, outcomes, status, store

# Consecutive runs failing on the same block with the same permanent error before
# that block is quarantined and the queue moves on.
FAILURE_STREAK_LIMIT: Final = 3
# An account whose lock another process has held this many intervals is reported: a
# replica cut off mid-run or a stuck run keeps it from being synced.
LOCK_REPORT_INTERVALS: Final = 3
# Restarts at the head of the queue after a rejected ``next`` token, per run.
_MAX_CURSOR_RESTARTS: Final = 3
# The note of a run the budget ended between two blocks (outcome succeeded, more_waiting).
BUDGET_NOTE: Final = "run budget reached, more waiting: the next run resumes at the stored cursor"

_log = structlog.get_logger(__name__)


class MetricsSink(Protocol):
    """The part of ``metrics.Metrics`` the sync and the scheduler call."""

    def account_configured(self, account: str, last_success: float | None = None) -> None: ...

    def block_committed(
        self, account: str, received: int, inserted: int, replays: int, malformed: int
    ) -> None: ...

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None: ...

    def error(self, account: str | None, kind: str) -> None: ...

    def login_guard(self, tripped: bool) -> None: ...

    def run_quarantined(self, account: str, blocks: int) -> None: ...

    def scheduler_event(self, kind: str, account: str | None) -> None: ...

    def api_observer(self) -> Any: ...


class _Sms(Protocol):
    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]: ...


class HistoryApi(Protocol):
    """What the sync needs from ``client.ThingSpaceClient``."""

    @property
    def sms(self) -> _Sms: ...


class Session(Protocol):
    """One account run's hold on the database: the account's lock, then every write of the run.

    Each write is one transaction of its own. ``commit_block`` and ``quarantine_block`` settle
    the block's ``gate.Ticket`` only once their transaction committed, so no request can
    acknowledge a block before it is stored (or kept); a write that raises settled nothing.
    """

    @property
    def start(self) -> store.RunStart | None:
        """The run's id and the stored cursor; None when another process holds the account."""
        ...

    def lock_holder(self) -> status.LockHolder | None: ...

    def commit_block(self, page: models.HistoryPage) -> store.BlockResult:
        """The block's rows, the cursor (``page.next``) and the run's counters, all or nothing."""
        ...

    def quarantine_block(self, block: models.KeptBlock, ticket: gate.Ticket | None) -> store.QuarantineResult:
        """The block's bytes kept and the cursor moved past it (``block.next_token``), all or nothing."""
        ...

    def record_block_failure(
        self, *, request_token: str | None, body_sha256: str, error_kind: str, error: str
    ) -> int:
        """One more run failing to store the same block with the same error kind: the streak."""
        ...

    def clear_cursor(self, reason: str) -> None: ...

    def finish_run(self, outcome: str, error: str | None, *, clear_failure_streak: bool) -> None: ...


class Store(Protocol):
    """What the sync needs of the database (``store.PostgresStore``; the tests' in-memory fake)."""

    def begin_run(self, account: str) -> contextlib.AbstractContextManager[Session]:
        """Take the account's lock and open its run; the lock is held until the context ends."""
        ...

    def ensure_partitions(self, times: Sequence[datetime.datetime]) -> None: ...


class _Stopped(Exception):
    """Internal: the stop event was seen between blocks."""


class _BudgetReached(Exception):
    """The run budget ended between two blocks, after progress: the run ends cleanly."""


class PagingLoopError(errors.ResponseFormatError):
    """Paging does not converge: a block named the token that fetched it, or a run
    went past ``max_blocks`` blocks. Ends the run instead of looping forever."""


def sync_account(
    api: HistoryApi,
    account: str,
    storage: Store,
    *,
    deadline: float | None = None,
    stop_event: threading.Event | None = None,
    metrics: MetricsSink | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_blocks: int = config.DEFAULT_MAX_BLOCKS_PER_RUN,
    lock_report_after: float | None = None,
) -> outcomes.AccountResult:
    """Drain ``account``'s history queue into the database, block by block.

    ``deadline`` is a ``clock()`` value (monotonic): the client does not start
    a retry wait that would end after it. The whole run holds the account's
    lock (``storage.begin_run``); the block writes go through that same session
    (``store.PostgresStore``: one connection), so losing it loses the lock and the
    writes together and another replica can never write the account while this
    one still believes it owns it.

    Never raises for an account-level problem: the result carries the outcome.
    """
    run = _AccountRun(
        api,
        account,
        storage,
        deadline=deadline,
        stop_event=stop_event,
        metrics=metrics,
        clock=clock,
        max_blocks=max_blocks,
        lock_report_after=lock_report_after,
    )
    with logs.bound_account(account):
        return run.run()


class _AccountRun:
    def __init__(
        self,
        api: HistoryApi,
        account: str,
        storage: Store,
        *,
        deadline: float | None,
        stop_event: threading.Event | None,
        metrics: MetricsSink | None,
        clock: Callable[[], float],
        max_blocks: int,
        lock_report_after: float | None = None,
    ) -> None:
        self.api = api
        self.max_blocks = max_blocks
        # A lock held longer than this (seconds) by another process is reported as a problem.
        self.lock_report_after = lock_report_after
        # The final answer stayed unreadable: whether more messages wait is unknown.
        self.end_unknown = False
        self.account = account
        self.storage = storage
        self.deadline = deadline
        self.stop_event = stop_event
        self.metrics = metrics
        self.clock = clock
        self.started = clock()
        self.blocks = self.received = self.inserted = self.replays = self.malformed = 0
        self.quarantined = 0
        self.more_waiting = False

    def run(self) -> outcomes.AccountResult:
        try:
            # The lock is released when the session ends, after the run's last statement committed.
            with self.storage.begin_run(self.account) as session:
                if session.start is None:
                    return self.skipped(session)
                return self.locked(session, session.start)
        except errors.SyncWorkerError as exc:
            # No connection, or the run's first statement failed on a fresh one: there is no
            # sync_run row to record it in (the database refused the very write that makes one).
            # The log event, the metrics and the result (begun=False) say so instead.
            return self.finish("failed", exc, begun=False)

    def skipped(self, session: Session) -> outcomes.AccountResult:
        """Another process syncs this account now; say who, and loudly when it has for long."""
        if self.metrics is not None:
            self.metrics.scheduler_event("lock_busy", self.account)
        try:
            holder = session.lock_holder()
        except errors.SyncWorkerError:
            holder = None
        note = None if holder is None else f"another process holds the account: {holder.describe()}"
        limit = self.lock_report_after
        if holder is not None and limit is not None and holder.held_seconds > limit:
            # A replica cut off mid-run, or a run stuck: the account is not being synced.
            _log.warning(
                "account_lock_held_long",
                holder=f"{holder.host}:{holder.pid}",
                held_seconds=round(holder.held_seconds),
                report_after=limit,
            )
            if self.metrics is not None:
                self.metrics.scheduler_event("lock_held_long", self.account)
        return self.finish("skipped_locked", error=note)

    def locked(self, session: Session, begun: store.RunStart) -> outcomes.AccountResult:
        if begun.abandoned:
            _log.warning("abandoned_runs_closed", runs=begun.abandoned)
        outcome: outcomes.Outcome = "succeeded"
        failure: BaseException | None = None
        deferred = False
        try:
            self.drain(session, begun.cursor)
        except _Stopped:
            outcome = "interrupted"
        except _BudgetReached:
            # Everything asked for is committed and nothing was sent that acknowledges more.
            self.more_waiting = True
        except errors.LoginGuardTrippedError as exc:
            outcome, failure = "guard_tripped", exc
        except errors.TransientError as exc:
            # A 429 or a 503 may carry Retry-After; the client raises instead of
            # waiting past the deadline, which is the run budget ending cleanly.
            outcome, failure = "failed", exc
            deferred = (
                exc.retry_after is not None
                and self.deadline is not None
                and exc.retry_after > self.deadline - self.clock()
            )
        except errors.SyncWorkerError as exc:
            outcome, failure = "failed", exc
        except Exception as exc:
            # A bug must end this account's run, not the pass or the daemon.
            _log.exception("account_run_crashed")
            outcome, failure = "failed", exc

        error_text = None if failure is None else outcomes.describe(failure)
        if outcome == "succeeded" and self.quarantined:
            outcome = "quarantined"
            error_text = (
                f"quarantined {self.quarantined} block(s) that could not be read or stored; "
                "see `sync-worker quarantine list` (the queue moved past them)"
            )
            if self.end_unknown:
                error_text += (
                    "; the final answer was unreadable, so whether more messages wait is "
                    "unknown until the next run"
                )
        if self.more_waiting:
            error_text = BUDGET_NOTE if error_text is None else f"{error_text}; {BUDGET_NOTE}"
        if deferred:
            error_text = f"deferred: Retry-After exceeds the remaining run budget; {error_text}"
        try:
            # A succeeded run ends the account's failure streak in the same statement.
            session.finish_run(outcome, error_text, clear_failure_streak=outcome == "succeeded")
        except errors.SyncWorkerError as exc:
            _log.warning("finish_run_failed", error=outcomes.describe(exc))
        return self.finish(outcome, failure, error_text, deferred=deferred)

    def drain(self, session: Session, cursor: str | None) -> None:
        restarts = 0
        while True:
            self.between_blocks()
            blocks = self.api.sms.iter_history_blocks(self.account, cursor, deadline=self.deadline)
            first = True
            try:
                # Asking the generator for an item sends the request that
                # acknowledges the block before it, so that only happens at the
                # top of this loop, after the previous block was committed.
                for page in blocks:
                    first = False
                    self.check_paging(page)
                    self.commit(session, page)
                    if page.is_final:
                        return
                    self.between_blocks()
                return
            except errors.MalformedBlockError as exc:
                # Every attempt came back unreadable (the client retried the same
                # request first). Failing here would leave the block unacknowledged,
                # and a platform that keeps serving it would stop the queue forever.
                # Its bytes are kept and reported; only then does the gate let its token out.
                ticket = gate.Ticket(exc.next_token, None)
                self.quarantine(session, models.KeptBlock.from_error(exc), ticket)
                if exc.next_token is None:
                    self.end_unknown = True
                    return
                cursor = gate.release(ticket)
            except errors.InvalidCursorError:
                # Restarting at the head is always safe: every block a rejected
                # token could acknowledge is committed already, and whatever is
                # still queued comes back (as replays if stored). It happens with
                # a stale stored token, and mid-drain with single-use tokens when
                # a response was lost and the retry re-sent a consumed token.
                # Bounded, so a platform rejecting every token cannot loop us.
                if restarts >= _MAX_CURSOR_RESTARTS:
                    raise
                restarts += 1
                _log.warning(
                    "cursor_rejected",
                    token="stored" if first and restarts == 1 and cursor is not None else "in_flight",
                    action="cleared; restarting at the head of the queue",
                )
                session.clear_cursor("next token rejected by the API")
                cursor = None
            finally:
                close = getattr(blocks, "close", None)
                if close is not None:
                    close()

    def check_paging(self, page: models.HistoryPage) -> None:
        if page.next is not None and page.next == page.request_next:
            raise PagingLoopError(
                "history answered with the very next token it was asked with; paging would loop "
                "forever (nothing of this block was stored)",
                status=page.status,
                operation="list_devices_sms_messages",
            )
        if self.blocks >= self.max_blocks:
            raise PagingLoopError(
                f"more than {self.max_blocks} blocks in one run (SYNC_MAX_BLOCKS_PER_RUN); ending "
                "the run, the next one resumes at the stored cursor",
                status=page.status,
                operation="list_devices_sms_messages",
            )

    def commit(self, session: Session, page: models.HistoryPage) -> None:
        try:
            result = session.commit_block(page)
        except (errors.TransientError, _Stopped):
            raise
        except Exception as exc:
            if not self.failed_again(session, page, exc):
                raise
            self.quarantine(session, _unstorable(page, exc), page.ticket)
            return
        malformed = len(result.malformed)
        self.blocks += 1
        self.received += result.received
        self.inserted += result.inserted
        self.replays += result.replays
        self.malformed += malformed
        _log.info(
            "block_committed",
            block=self.blocks,
            received=result.received,
            inserted=result.inserted,
            replays=result.replays,
            malformed=malformed,
            final=page.is_final,
        )
        if self.metrics is not None:
            self.metrics.block_committed(
                self.account, result.received, result.inserted, result.replays, malformed
            )

    def failed_again(self, session: Session, page: models.HistoryPage, exc: Exception) -> bool:
        """Count a permanent failure to store ``page``; True once the streak reaches the limit."""
        digest = hashlib.sha256(page.body).hexdigest()
        try:
            streak = session.record_block_failure(
                request_token=page.request_next,
                body_sha256=digest,
                error_kind=type(exc).__name__,
                error=outcomes.describe(exc),
            )
        except errors.SyncWorkerError:
            _log.warning("failure_streak_not_recorded", account=self.account)
            return False
        _log.error(
            "block_store_failed",
            account=self.account,
            streak=streak,
            limit=FAILURE_STREAK_LIMIT,
            sha256=digest,
            error=outcomes.describe(exc),
        )
        return streak >= FAILURE_STREAK_LIMIT and bool(page.body)

    def quarantine(self, session: Session, block: models.KeptBlock, ticket: gate.Ticket | None) -> None:
        result = session.quarantine_block(block, ticket)
        self.quarantined += 1
        _log.error(
            "block_quarantined",
            account=self.account,
            status=block.http_status,
            problem=block.problem,
            size=block.body_size,
            sha256=block.body_sha256,
            truncated=block.body_size > len(block.body),
            quarantine_id=result.quarantine_id,
            replay=not result.inserted,
            final=block.next_token is None,
        )
        if self.metrics is not None:
            self.metrics.error(self.account, "malformed_block")

    def check_stop(self) -> None:
        if self.stop_event is not None and self.stop_event.is_set():
            raise _Stopped

    def between_blocks(self) -> None:
        """Before asking for the next block: stop if asked to, or end cleanly once the budget
        ended after progress (a request sent now would only be cut, failing a healthy run)."""
        self.check_stop()
        progressed = self.blocks > 0 or self.quarantined > 0
        if progressed and self.deadline is not None and self.clock() >= self.deadline:
            raise _BudgetReached

    def finish(
        self,
        outcome: outcomes.Outcome,
        exc: BaseException | None = None,
        error: str | None = None,
        *,
        deferred: bool = False,
        begun: bool = True,
    ) -> outcomes.AccountResult:
        if error is None and exc is not None:
            error = outcomes.describe(exc)
        result = outcomes.AccountResult(
            account=self.account,
            outcome=outcome,
            blocks=self.blocks,
            received=self.received,
            inserted=self.inserted,
            replays=self.replays,
            malformed=self.malformed,
            quarantined=self.quarantined,
            duration_seconds=round(self.clock() - self.started, 6),
            error=error,
            error_kind=None if exc is None else type(exc).__name__,
            begun=begun,
            more_waiting=self.more_waiting,
        )
        outcomes.log_run(result, deferred=deferred)
        if self.metrics is not None:
            if exc is not None:
                self.metrics.error(self.account, outcomes.error_kind(exc))
            if outcome == "guard_tripped":
                self.metrics.login_guard(True)
            if outcome != "skipped_locked":
                self.metrics.run_finished(self.account, outcome, time.time(), outcome == "succeeded")
            if outcome in ("succeeded", "quarantined"):
                self.metrics.run_quarantined(self.account, self.quarantined)
        return result


def _unstorable(page: models.HistoryPage, exc: BaseException) -> models.KeptBlock:
    return models.KeptBlock(
        http_status=page.status,
        request_token=page.request_next,
        next_token=page.next,
        problem=(
            f"storing failed in {FAILURE_STREAK_LIMIT} consecutive runs with the same error "
            f"({outcomes.describe(exc)[:300]}); replay once fixed"
        ),
        body=page.body[: errors.MalformedBlockError.MAX_KEPT_BODY],
        body_size=len(page.body),
        body_sha256=hashlib.sha256(page.body).hexdigest(),
        received_at=datetime.datetime.now(datetime.UTC),
    )


def lock_report_after(interval_seconds: float) -> float:
    """Seconds after which another process holding an account's lock is reported."""
    return LOCK_REPORT_INTERVALS * interval_seconds


def stoppable_sleep(stop_event: threading.Event) -> Callable[[float], None]:
    """A retry sleep that wakes when ``stop_event`` is set and then ends the run as interrupted.

    SIGTERM must not wait out a 120 s ``Retry-After``; the run stops where it
    is (nothing uncommitted is acknowledged) like any stop between blocks.
    """

    def sleep(seconds: float) -> None:
        if stop_event.wait(seconds):
            raise _Stopped

    return sleep


def partitions_ahead(storage: Store) -> None:
    """This month's and next month's history partitions, before any block needs them.

    Best effort: a block whose partition is missing creates it itself, so a failure here
    (the database down, a lock wait given up) only costs that block a retry of its statement.
    """
    now = datetime.datetime.now(datetime.UTC)
    try:
        storage.ensure_partitions([now, now + datetime.timedelta(days=32)])
    except errors.SyncWorkerError as exc:
        _log.warning("partitions_ahead_failed", error=outcomes.describe(exc))


def run_accounts(
    api: HistoryApi,
    names: Sequence[str],
    storage: Store,
    *,
    concurrency: int,
    budget_seconds: float,
    stop_event: threading.Event | None = None,
    metrics: MetricsSink | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_blocks: int = config.DEFAULT_MAX_BLOCKS_PER_RUN,
    lock_report_after: float | None = None,
) -> list[outcomes.AccountResult]:
    """Sync ``names`` on a bounded pool; results in the order of ``names``."""

    def one(name: str) -> outcomes.AccountResult:
        # The budget starts when the account does, not when the pass did:
        # accounts waiting for a pool slot must not start with less time.
        deadline = clock() + budget_seconds
        try:
            return sync_account(
                api,
                name,
                storage,
                deadline=deadline,
                stop_event=stop_event,
                metrics=metrics,
                clock=clock,
                max_blocks=max_blocks,
                lock_report_after=lock_report_after,
            )
        except Exception as exc:
            _log.exception("account_run_crashed", account=name)
            return outcomes.AccountResult(
                name, "failed", error=outcomes.describe(exc), error_kind=type(exc).__name__
            )

    if not names:
        return []
    partitions_ahead(storage)
    workers = max(1, min(concurrency, len(names)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sync") as pool:
        return list(pool.map(one, names))
