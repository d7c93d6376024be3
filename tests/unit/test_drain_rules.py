"""The drain rules as a table: API answers x store behaviour -> requests, commits, quarantines, outcomes.

Each row runs ``sync.sync_account`` (as many runs as it lists outcomes) against a scripted history API
(``tests.fakes.ScriptedHistory``, paging through the real ``gate``) and the in-memory store
(``tests.memory_store.MemoryStore``), sharing one journal: ``GET head`` / ``GET t1`` is a request and the
token it carried (sending a block's token acknowledges that block), ``commit 2 ->t1`` a block of two
messages committed with the cursor moved to ``t1``, ``quarantine ->t2`` a block kept byte for byte,
``streak n`` a permanent failure counted, ``finish ...`` the run's row closed. A crashed run (``Crash``:
the process killed) has no ``finish``; the next run starts from what was committed.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from sync_worker import errors, models, sync
from tests import fakes, memory_store

ACCOUNT = "0252012345-00001"
BUG = errors.StoreError("a row the statement refuses")
GONE = errors.DatabaseUnavailableError("database unavailable (connection lost)")


def b(name: str, next_token: str | None, size: int = 2) -> models.HistoryPage:
    return fakes.block(ACCOUNT, name, next_token, size)


U2 = fakes.Unreadable("t2", body=b'{"messages": [{"message": "b2.0"}, {"mess')


@dataclasses.dataclass(frozen=True)
class Fault:
    """The ``call``-th call of ``operation`` raises ``error``; ``after``: once its write landed."""

    operation: str
    call: int
    error: BaseException
    after: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
    answers: tuple[fakes.Answer, ...]
    journal: tuple[str, ...]
    outcomes: tuple[str, ...]  # each run's outcome; "crash" for a run the process died in
    stored: tuple[str, ...]  # the blocks whose messages are in the history, in the order stored
    quarantined: tuple[bytes, ...] = ()  # the bodies kept, one per quarantine row
    faults: tuple[Fault, ...] = ()


RULES: dict[str, Rule] = {
    "acknowledge only after commit: each token is sent once its block is committed": Rule(
        answers=(b("b1", "t1"), b("b2", "t2"), b("b3", None)),
        journal=(
            "GET head",
            "commit 2 ->t1",
            "GET t1",
            "commit 2 ->t2",
            "GET t2",
            "commit 2 ->end",
            "finish succeeded",
        ),
        outcomes=("succeeded",),
        stored=("b1", "b2", "b3"),
    ),
    "a final block ends the drain: nothing is requested after it": Rule(
        answers=(b("b1", None),),
        journal=("GET head", "commit 2 ->end", "finish succeeded"),
        outcomes=("succeeded",),
        stored=("b1",),
    ),
    "an empty final block is committed (the cursor moves to its end) and ends the drain": Rule(
        answers=(b("b1", "t1"), b("b2", None, size=0)),
        journal=("GET head", "commit 2 ->t1", "GET t1", "commit 0 ->end", "finish succeeded"),
        outcomes=("succeeded",),
        stored=("b1",),
    ),
    "a transient commit failure sends no next token; the next run asks for the block again": Rule(
        answers=(b("b1", "t1"), b("b1", "t1"), b("b2", None)),
        faults=(Fault("commit_block", 1, GONE),),
        journal=(
            "GET head",
            "commit_block failed: DatabaseUnavailableError",
            "finish failed",
            "GET head",
            "commit 2 ->t1",
            "GET t1",
            "commit 2 ->end",
            "finish succeeded",
        ),
        outcomes=("failed", "succeeded"),
        stored=("b1", "b2"),
    ),
    "a permanent commit failure is counted and sends no next token": Rule(
        answers=(b("b1", "t1"),),
        faults=(Fault("commit_block", 1, BUG),),
        journal=("GET head", "commit_block failed: StoreError", "streak 1", "finish failed"),
        outcomes=("failed",),
        stored=(),
    ),
    "the same permanent failure in FAILURE_STREAK_LIMIT runs: quarantine, then move on": Rule(
        answers=(b("b1", "t1"), b("b1", "t1"), b("b1", "t1"), b("b2", None)),
        faults=tuple(Fault("commit_block", n, BUG) for n in range(1, sync.FAILURE_STREAK_LIMIT + 1)),
        journal=(
            *("GET head", "commit_block failed: StoreError", "streak 1", "finish failed"),
            *("GET head", "commit_block failed: StoreError", "streak 2", "finish failed"),
            *("GET head", "commit_block failed: StoreError", "streak 3", "quarantine ->t1"),
            *("GET t1", "commit 2 ->end", "finish quarantined"),
        ),
        outcomes=("failed", "failed", "quarantined"),
        stored=("b2",),
        quarantined=(b("b1", "t1").body,),
    ),
    "an unreadable answer is quarantined with its bytes, then paging moves on with its token": Rule(
        answers=(b("b1", "t1"), U2, b("b3", None)),
        journal=(
            "GET head",
            "commit 2 ->t1",
            "GET t1",
            "quarantine ->t2",
            "GET t2",
            "commit 2 ->end",
            "finish quarantined",
        ),
        outcomes=("quarantined",),
        stored=("b1", "b3"),
        quarantined=(U2.body,),
    ),
    "an unreadable final answer is quarantined and nothing is requested after it": Rule(
        answers=(b("b1", "t1"), fakes.Unreadable(None)),
        journal=("GET head", "commit 2 ->t1", "GET t1", "quarantine ->end", "finish quarantined"),
        outcomes=("quarantined",),
        stored=("b1",),
        quarantined=(fakes.Unreadable(None).body,),
    ),
    "an unreadable answer is retried (same token) before anything past it is acknowledged": Rule(
        answers=(b("b1", "t1"), fakes.Unreadable("t2", cut_short=True), b("b2", "t2"), b("b3", None)),
        journal=(
            *("GET head", "commit 2 ->t1", "GET t1", "finish failed"),
            *("GET t1", "commit 2 ->t2", "GET t2", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("failed", "succeeded"),
        stored=("b1", "b2", "b3"),
    ),
    "a failed quarantine sends no next token; the next run quarantines the block again": Rule(
        answers=(b("b1", "t1"), U2, U2, b("b3", None)),
        faults=(Fault("quarantine_block", 1, GONE),),
        journal=(
            *("GET head", "commit 2 ->t1", "GET t1", "quarantine_block failed: DatabaseUnavailableError"),
            "finish failed",
            *("GET t1", "quarantine ->t2", "GET t2", "commit 2 ->end", "finish quarantined"),
        ),
        outcomes=("failed", "quarantined"),
        stored=("b1", "b3"),
        quarantined=(U2.body,),
    ),
    "a crash before the commit: the next run starts at the stored cursor and stores the block": Rule(
        answers=(b("b1", "t1"), b("b2", "t2"), b("b2", "t2"), b("b3", None)),
        faults=(Fault("commit_block", 2, memory_store.Crash()),),
        journal=(
            *("GET head", "commit 2 ->t1", "GET t1", "commit_block failed: Crash"),
            *("GET t1", "commit 2 ->t2", "GET t2", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("crash", "succeeded"),
        stored=("b1", "b2", "b3"),
    ),
    "a crash after the commit, before the acknowledging request: the next run resumes past it": Rule(
        answers=(b("b1", "t1"), b("b2", None)),
        faults=(Fault("commit_block", 1, memory_store.Crash(), after=True),),
        journal=(
            *("GET head", "commit 2 ->t1", "commit_block landed, then Crash"),
            *("GET t1", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("crash", "succeeded"),
        stored=("b1", "b2"),
    ),
    "a commit that landed but whose answer was lost sends no next token; the next run resumes": Rule(
        answers=(b("b1", "t1"), b("b2", None)),
        faults=(Fault("commit_block", 1, GONE, after=True),),
        journal=(
            *("GET head", "commit 2 ->t1", "commit_block landed, then DatabaseUnavailableError"),
            "finish failed",
            *("GET t1", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("failed", "succeeded"),
        stored=("b1", "b2"),
    ),
    "a crash after a quarantine: the next run resumes past the kept block": Rule(
        answers=(U2, b("b3", None)),
        faults=(Fault("quarantine_block", 1, memory_store.Crash(), after=True),),
        journal=(
            *("GET head", "quarantine ->t2", "quarantine_block landed, then Crash"),
            *("GET t2", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("crash", "succeeded"),
        stored=("b3",),
        quarantined=(U2.body,),
    ),
    "an API failure mid-drain keeps the cursor at the last committed block": Rule(
        answers=(b("b1", "t1"), errors.ApiTransientError("server error", status=503), b("b2", None)),
        journal=(
            *("GET head", "commit 2 ->t1", "GET t1", "finish failed"),
            *("GET t1", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("failed", "succeeded"),
        stored=("b1", "b2"),
    ),
    "a block naming the token that fetched it ends the run with nothing of it stored": Rule(
        answers=(b("b1", "t1"), b("b2", "t1")),
        journal=("GET head", "commit 2 ->t1", "GET t1", "finish failed"),
        outcomes=("failed",),
        stored=("b1",),
    ),
    "a token rejected mid-drain clears the cursor and restarts at the head of the queue": Rule(
        answers=(b("b1", "t1"), errors.InvalidCursorError("bad next", status=400), b("b2", None)),
        journal=(
            *("GET head", "commit 2 ->t1", "GET t1", "clear cursor"),
            *("GET head", "commit 2 ->end", "finish succeeded"),
        ),
        outcomes=("succeeded",),
        stored=("b1", "b2"),
    ),
    "a run whose finish cannot be recorded keeps its outcome": Rule(
        answers=(b("b1", None),),
        faults=(Fault("finish_run", 1, GONE),),
        journal=("GET head", "commit 2 ->end", "finish_run failed: DatabaseUnavailableError"),
        outcomes=("succeeded",),
        stored=("b1",),
    ),
}


def stored_blocks(mem: memory_store.MemoryStore) -> tuple[str, ...]:
    """The block names (``b1`` of ``b1.0``) of the stored messages, in the order first stored."""
    names = [text.split(".")[0] for text in mem.stored(ACCOUNT) if text is not None]
    return tuple(dict.fromkeys(names))


def settled_before_sent(journal: list[str]) -> list[str]:
    """Every ``GET t`` whose token was not committed (or quarantined) before: the promise broken."""
    settled: set[str] = set()
    broken = []
    for line in journal:
        moved = re.fullmatch(r"(?:commit \d+|quarantine) ->(\S+)", line)
        if moved:
            settled.add(moved.group(1))
        elif line.startswith("GET ") and line != "GET head" and line[4:] not in settled:
            broken.append(line)
    return broken


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_drain_rule(rule: Rule) -> None:
    """Each row: the requests sent and their tokens, the commits and quarantines, each run's outcome."""
    journal: list[str] = []
    mem = memory_store.MemoryStore(journal)
    for fault in rule.faults:
        mem.fail(fault.operation, fault.error, call=fault.call, after=fault.after)
    api = fakes.ScriptedHistory(journal, rule.answers)
    outcomes: list[str] = []
    for _ in rule.outcomes:
        try:
            outcomes.append(sync.sync_account(api, ACCOUNT, mem).outcome)
        except memory_store.Crash:
            outcomes.append("crash")
    assert journal == list(rule.journal)
    assert tuple(outcomes) == rule.outcomes
    assert stored_blocks(mem) == rule.stored
    assert tuple(kept.block.body for kept in mem.kept) == rule.quarantined
    assert api.answers == [], "every scripted answer was asked for"
    assert settled_before_sent(journal) == []
    # A run the process died in was closed by the next one's begin_run, not left "running".
    assert all(run.outcome is not None for run in list(mem.runs.values())[:-1])
