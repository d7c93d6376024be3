"""Small fakes shared by tests: a clock that never waits, a history API answering from a script."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence

from sync_worker import errors, gate, models


class FakeTime:
    """An injected clock whose sleep advances it, so no real time passes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptExhausted(BaseException):
    """The code under test sent a request the script has no answer for (escapes the sync's handlers)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """An answer that stayed unreadable through every attempt (the client's ``MalformedBlockError``);
    ``cut_short``: the attempts were cut short (``UnreadableAnswerError``, transient: asked again later)."""

    next_token: str | None
    body: bytes = b'{"messages": [{"message": "cut here'
    cut_short: bool = False

    def error(self, request_next: str | None) -> errors.SyncWorkerError:
        status = 200 if self.next_token is None else 202
        block = errors.MalformedBlockError(
            "history block body is unreadable: response body is not JSON",
            body=self.body,
            problem="response body is not JSON",
            next_token=self.next_token,
            request_next=request_next,
            status=status,
        )
        if not self.cut_short:
            return block
        return errors.UnreadableAnswerError("history answer is unreadable", block=block, status=status)


def block(account: str, name: str, next_token: str | None, size: int = 2) -> models.HistoryPage:
    """A readable block of ``size`` messages (texts ``name.0``, ``name.1``...); final when no token."""
    wire = [{"message": f"{name}.{i}"} for i in range(size)]
    body = json.dumps({"hasMoreData": next_token is not None, "messages": wire}).encode()
    messages = tuple(models.SMSMessage.from_wire(m) for m in wire)
    status = 200 if next_token is None else 202
    return models.HistoryPage(account, messages, next_token is not None, status, next_token, body=body)


Answer = models.HistoryPage | Unreadable | BaseException


class ScriptedHistory:
    """``sync.HistoryApi`` answering from a script, one answer per request, across calls and runs.

    Pages like the client's ``iter_history_blocks``: the request carrying a block's token goes out
    only through ``gate.release``, so only once the block's ticket is settled. Each request is a line
    of ``journal`` (``GET head``, ``GET t1``), and ``acknowledged`` lists the tokens sent.
    """

    def __init__(self, journal: list[str], answers: Sequence[Answer]) -> None:
        self.journal = journal
        self.answers = list(answers)
        self.sms = self
        self.calls: list[str | None] = []  # the cursor each drain started from
        self.acknowledged: list[str] = []

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        self.calls.append(next)
        sent = next
        while True:
            self.journal.append(f"GET {sent or 'head'}")
            if sent is not None:
                self.acknowledged.append(sent)
            if not self.answers:
                raise ScriptExhausted(f"no answer scripted for GET {sent or 'head'}")
            answer = self.answers.pop(0)
            if isinstance(answer, Unreadable):
                raise answer.error(sent)
            if isinstance(answer, BaseException):
                raise answer
            page = dataclasses.replace(
                answer, request_next=sent, ticket=gate.Ticket(answer.next, len(answer.messages))
            )
            yield page
            if page.next is None:
                return
            sent = gate.release(page.ticket)
