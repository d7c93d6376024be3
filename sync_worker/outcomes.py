"""What an account run and a pass end as: ``AccountResult``, ``PassResult``, the run's log line.

Outcomes of an account run (``AccountResult.outcome``):

``succeeded``
    drained to the final block, every block stored; or the run budget
    (``deadline``) ended *between* two blocks after at least one was stored or
    quarantined: the cursor is committed, the next block was not asked for,
    ``more_waiting`` is set and ``error`` carries the note ``sync.BUDGET_NOTE`` (the
    daemon makes the account due again at once). A catch-up of a big backlog
    is progress, not a failure. A budget that ends *inside* an exchange (an
    answer still trickling in) cuts it: that run is ``failed``.
``quarantined``
    drained, but at least one block was *quarantined*: its exact bytes went to
    ``sms_quarantine``, the cursor moved past it, an error-level
    ``block_quarantined`` event was logged, and paging continued. That happens
    to an answer that stayed unreadable through every retry attempt
    (``errors.MalformedBlockError``: the client re-sends the same request first
    and never follows the token of an unreadable answer), and to a readable
    block that failed to be stored with the same permanent error in
    ``sync.FAILURE_STREAK_LIMIT`` consecutive runs (a bug of ours must not stop the
    account forever). Not a success: ``once`` exits 5, ``error`` carries a note
    that ``status`` shows, and ``sync-worker quarantine replay`` stores the
    block's messages once the code can read them. A final answer that stayed
    unreadable also means the run cannot tell whether more messages wait.
``failed``
    the run ended early with ``error`` set; the cursor stays at the last
    committed block and the next run resumes there. This includes a
    ``Retry-After`` longer than the run's remaining time budget: the run ends
    at once instead of sleeping through the next schedule (the log event and
    the error text say ``deferred``).
``skipped_locked``
    another replica (or an overlapping cron run) holds the account's advisory
    lock and is syncing it right now. ``error`` names the holder (host:pid and
    since when, from its ``sync_run`` row); a holder older than
    ``sync.LOCK_REPORT_INTERVALS`` intervals is logged (``account_lock_held_long``)
    and counted (``scheduler_events_total{kind="lock_held_long"}``).
``interrupted``
    the stop event was set; the block in flight was committed first.
``guard_tripped``
    the login guard refused to log in (too many consecutive failed logins).

``PassResult.exit_code``: 0 every account succeeded or was skipped because
another replica has it; 4 the login guard tripped or the credentials were
refused; 1 any account failed or was interrupted; 5 otherwise when any
account quarantined a block.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal

import structlog

from sync_worker import errors, exitcodes

Outcome = Literal["succeeded", "quarantined", "failed", "skipped_locked", "interrupted", "guard_tripped"]

_log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class AccountResult:
    account: str
    outcome: Outcome
    blocks: int = 0
    received: int = 0
    inserted: int = 0
    replays: int = 0
    malformed: int = 0
    quarantined: int = 0
    duration_seconds: float = 0.0
    error: str | None = None
    # The errors class name, so the CLI can tell refused credentials (exit 4)
    # from an outage (exit 1) without parsing text.
    error_kind: str | None = None
    # False: the run could not start (no connection, or its first statement failed), so no
    # sync_run row records it; the daemon makes the account due again soon, not an interval later.
    begun: bool = True
    # The run budget ended between two blocks (progress committed, the next block not asked for):
    # more messages may wait, so the daemon makes the account due again at once.
    more_waiting: bool = False

    @property
    def ok(self) -> bool:
        """The queue was drained (or another replica has it); a quarantine still counts as drained."""
        return self.outcome in ("succeeded", "skipped_locked", "quarantined")

    @property
    def auth_refused(self) -> bool:
        return self.outcome == "guard_tripped" or self.error_kind in _AUTH_KINDS

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_AUTH_KINDS: Final = frozenset(
    {"AuthError", "LoginFailedError", "LoginGuardTrippedError"},
)


@dataclasses.dataclass(frozen=True, slots=True)
class PassResult:
    accounts: list[AccountResult]

    @property
    def exit_code(self) -> int:
        if any(r.auth_refused for r in self.accounts):
            return exitcodes.AUTH
        if not all(r.ok for r in self.accounts):
            return exitcodes.FAILED
        if any(r.outcome == "quarantined" for r in self.accounts):
            return exitcodes.QUARANTINED
        return exitcodes.OK

    def summary(self) -> dict[str, Any]:
        """Totals for one JSON log line or the CLI's final output."""
        outcomes: dict[str, int] = {}
        for r in self.accounts:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        return {
            "accounts": len(self.accounts),
            "outcomes": outcomes,
            "blocks": sum(r.blocks for r in self.accounts),
            "received": sum(r.received for r in self.accounts),
            "inserted": sum(r.inserted for r in self.accounts),
            "replays": sum(r.replays for r in self.accounts),
            "malformed": sum(r.malformed for r in self.accounts),
            "quarantined": sum(r.quarantined for r in self.accounts),
            "failed": sorted(r.account for r in self.accounts if not r.ok),
            "exit_code": self.exit_code,
        }


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


# First match wins: subclasses before their bases.
ERROR_KINDS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (errors.DatabaseUnavailableError, "database"),
    (errors.LoginGuardTrippedError, "login_guard"),
    (errors.AuthError, "auth"),
    (errors.RateLimitedError, "rate_limited"),
    (errors.InvalidCursorError, "invalid_cursor"),
    (errors.TransientError, "transient"),
    (errors.PermanentError, "permanent"),
)


def error_kind(exc: BaseException) -> str:
    return next((kind for cls, kind in ERROR_KINDS if isinstance(exc, cls)), "internal")


def log_run(result: AccountResult, *, deferred: bool) -> None:
    fields: dict[str, Any] = {
        "blocks": result.blocks,
        "messages": result.received,
        "inserted": result.inserted,
        "replays": result.replays,
        "malformed": result.malformed,
        "quarantined": result.quarantined,
        "duration": result.duration_seconds,
        "outcome": result.outcome,
    }
    if deferred:
        fields["deferred"] = True
    if result.more_waiting:
        fields["more_waiting"] = True
    if not result.begun:
        fields["begun"] = False
    if result.error is not None:
        fields["error"] = result.error
    if result.outcome in ("succeeded", "skipped_locked", "interrupted"):
        _log.info("account_run", **fields)
    elif result.outcome == "quarantined":
        _log.error("account_run", **fields)
    else:
        _log.warning("account_run", **fields)
