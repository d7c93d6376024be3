"""The paging rules without HTTP (``sync_worker.paging``): a history answer (status, ``Location``,
body) -> what it is and which token may be sent next; the unreadable-answer policy once the
attempts end; the ``Pager`` that hands out tokens only through the acknowledgement gate."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from sync_worker import errors, gate, models, paging

BASE = "https://thingspace.verizon.com/api"
ACCOUNT = "0252012345-00001"
HERE = f"/m2m/v1/sms/{ACCOUNT}/history?next=Tok2"
MESSAGE = {
    "deviceIds": [{"id": "00123", "kind": "imei"}],
    "message": "hi",
    "timestamp": "2024-05-01T10:00:00Z",
}


def _body(messages: Any = (MESSAGE,), more: Any = True, **extra: Any) -> bytes:
    return json.dumps({"messages": list(messages), "hasMoreData": more, **extra}).encode()


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: the answer, then what paging must decide."""

    name: str
    status: int
    location: str | None
    body: bytes
    kind: paging.Kind
    # The token the answer's request may be followed by (for an unreadable one: the token its
    # quarantine would move the cursor to); None: none.
    next_token: str | None = None
    problem: str = ""
    over_cap: int | None = None
    error: type[errors.ApiError] | None = None


TABLE = [
    Case("202 with a token", 202, HERE, _body(), "block", next_token="Tok2"),
    Case(
        "absolute Location, same origin",
        202,
        f"https://thingspace.verizon.com{HERE}",
        _body(),
        "block",
        "Tok2",
    ),
    Case("200: the final block", 200, None, _body(more=False), "final"),
    Case("200 with no message: an empty final block", 200, None, _body((), more=False), "final"),
    Case("a 200's Location is never read", 200, "https://evil.example/h?next=x", _body(more=False), "final"),
    Case("unknown member read past", 202, HERE, _body(extra=1), "block", next_token="Tok2"),
    Case(
        "an HTML page with a good Location",
        202,
        HERE,
        b"<html>busy</html>",
        "unreadable",
        next_token="Tok2",
        problem="not JSON",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "cut short",
        202,
        HERE,
        _body()[:-9],
        "unreadable",
        "Tok2",
        "not JSON",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "messages renamed",
        202,
        HERE,
        json.dumps({"msgs": [MESSAGE], "hasMoreData": True}).encode(),
        "unreadable",
        "Tok2",
        "no top-level 'messages'",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "messages twice",
        200,
        None,
        b'{"messages": [], "messages": [], "hasMoreData": false}',
        "unreadable",
        problem="more than once",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "202 saying hasMoreData false",
        202,
        HERE,
        _body(more=False),
        "unreadable",
        "Tok2",
        "hasMoreData false",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "200 saying hasMoreData true",
        200,
        None,
        _body(more=True),
        "unreadable",
        problem="hasMoreData true",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "202 with no message",
        202,
        HERE,
        _body(()),
        "unreadable",
        "Tok2",
        "no message",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "hasMoreData a string",
        202,
        HERE,
        _body(more="true"),
        "unreadable",
        "Tok2",
        "not a boolean",
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "over the size cap, its first bytes a whole block",
        202,
        HERE,
        _body(),
        "unreadable",
        "Tok2",
        "larger than 500 bytes",
        over_cap=500,
        error=errors.UnreadableAnswerError,
    ),
    Case(
        "unreadable, and no Location either",
        202,
        None,
        b"<html/>",
        "unreadable",
        problem="not JSON",
        error=errors.UnreadableAnswerError,
    ),
    Case("202 without Location", 202, None, _body(), "refused", error=errors.UnsafeLocationError),
    Case(
        "Location on another host",
        202,
        "https://evil.example/h?next=abc",
        _body(),
        "refused",
        error=errors.UnsafeLocationError,
    ),
    Case("two next tokens", 202, "/h?next=a&next=b", _body(), "refused", error=errors.UnsafeLocationError),
    Case(
        "a token too long", 202, "/h?next=" + "a" * 65, _body(), "refused", error=errors.UnsafeLocationError
    ),
    Case("204 is no history answer", 204, None, b"", "refused", error=errors.ResponseFormatError),
]


@pytest.mark.parametrize("case", TABLE, ids=[c.name for c in TABLE])
def test_the_decision_on_one_answer(case: Case) -> None:
    """Each answer of the table is decided as documented: a block and the token that may follow
    it, an unreadable answer (asked again, its token never followed), or paging that cannot go on."""
    unknown: list[str] = []
    answer = paging.Answer(case.status, case.location, case.body, case.over_cap)
    decision = paging.decide(
        answer, account_name=ACCOUNT, request_next="Tok1", base_url=BASE, on_unknown=unknown.append
    )
    assert decision.kind == case.kind
    if case.kind in ("block", "final"):
        page = decision.page
        assert page is not None and decision.error is None
        assert page.next == case.next_token and page.request_next == "Tok1" and page.body == case.body
        assert page.is_final == (case.kind == "final")
        assert page.ticket is not None and page.ticket.token == case.next_token
        assert page.ticket.listed == len(json.loads(case.body)["messages"]) and page.ticket.settled is None
        assert unknown == (["extra"] if b'"extra"' in case.body else [])
        return
    assert decision.page is None and type(decision.error) is case.error
    if isinstance(decision.error, errors.UnreadableAnswerError):
        block = decision.error.block
        assert case.problem in block.problem
        assert block.next_token == case.next_token and block.request_next == "Tok1"
        assert block.body == case.body and block.status == case.status


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (paging.Answer(202, HERE, b"<html/>" * 10, over_cap=50), "larger than 50 bytes"),
        (paging.Answer(200, None, _body(more=False) + b" " * 20, over_cap=20), "larger than 20 bytes"),
        (
            paging.Answer(202, HERE, b"<" * (errors.MalformedBlockError.MAX_KEPT_BODY + 1)),
            "larger than the quarantine keeps",
        ),
    ],
)
def test_only_what_is_kept_byte_for_byte_is_quarantined(answer: paging.Answer, why: str) -> None:
    """An unreadable answer whose bytes could not be kept whole (over the size cap, or over what the
    quarantine keeps) is asked for again, then fails the run instead of being quarantined: its token
    would acknowledge messages past the kept bytes."""
    decision = paging.decide(answer, account_name=ACCOUNT, request_next=None, base_url=BASE)
    assert decision.kind == "unreadable" and isinstance(decision.error, errors.UnreadableAnswerError)
    decision.error.attempts = 3
    final = paging.after_attempts(decision.error, max_attempts=3)
    assert type(final) is errors.ResponseFormatError and why in str(final) and "byte for byte" in str(final)
    decision.error.attempts = 1
    assert paging.after_attempts(decision.error, max_attempts=3) is decision.error


def test_read_raises_what_decide_decided() -> None:
    """``read`` is ``decide`` with the error raised: the page for a block, the error otherwise."""
    good = paging.Answer(202, HERE, _body())
    assert paging.read(good, account_name=ACCOUNT, request_next=None, base_url=BASE).next == "Tok2"
    with pytest.raises(errors.UnreadableAnswerError):
        paging.read(
            paging.Answer(202, HERE, b"<html/>"), account_name=ACCOUNT, request_next=None, base_url=BASE
        )


def _unreadable(location: str | None, attempts: int) -> errors.UnreadableAnswerError:
    answer = paging.Answer(202, location, b"<html/>")
    error = paging.decide(answer, account_name=ACCOUNT, request_next=None, base_url=BASE).error
    assert isinstance(error, errors.UnreadableAnswerError)
    error.attempts = attempts
    return error


@pytest.mark.parametrize(
    ("location", "attempts", "outcome"),
    [
        (HERE, 1, errors.UnreadableAnswerError),  # attempts cut short: a later run asks again
        (HERE, 3, errors.MalformedBlockError),  # every attempt unreadable: quarantined, token followed
        (None, 3, errors.UnsafeLocationError),  # nothing could be acknowledged: never quarantined
        ("https://evil.example/h?next=x", 3, errors.UnsafeLocationError),
        (None, 2, errors.UnreadableAnswerError),
    ],
)
def test_the_unreadable_answer_policy(
    location: str | None, attempts: int, outcome: type[errors.ApiError]
) -> None:
    """Once the retries stop, an unreadable answer stays transient if attempts were cut short, is a
    malformed block (quarantined) when its paging is usable, and fails the run when it is not."""
    exc = _unreadable(location, attempts)
    found = paging.after_attempts(exc, max_attempts=3)
    assert type(found) is outcome
    if outcome is errors.UnreadableAnswerError:
        assert found is exc
    if isinstance(found, errors.MalformedBlockError):
        assert found.next_token == "Tok2" and found.body == b"<html/>"


def _page(token: str | None, listed: int = 1) -> models.HistoryPage:
    status = 202 if token is not None else 200
    location = f"/h?next={token}" if token is not None else None
    body = _body(more=token is not None) if listed else _body((), more=False)
    return paging.read(
        paging.Answer(status, location, body), account_name=ACCOUNT, request_next=None, base_url=BASE
    )


def _ticket(page: models.HistoryPage) -> gate.Ticket:
    assert page.ticket is not None
    return page.ticket


def test_the_pager_sends_a_token_only_once_its_block_is_settled() -> None:
    """The first request carries the start token; each next one carries the last block's token only
    after the block was committed (or quarantined), and nothing is asked for after the final block."""
    pager = paging.Pager("Start1")
    assert not pager.done and pager.next_token() == "Start1"
    first = _page("Tok2")
    pager.took(first)
    with pytest.raises(errors.AcknowledgementRefusedError):
        pager.next_token()  # neither committed nor quarantined: the acknowledgement is not sent
    _ticket(first).committed(1)
    assert pager.next_token() == "Tok2" and not pager.done
    second = _page("Tok3")
    pager.took(second)
    _ticket(second).quarantined()
    assert pager.next_token() == "Tok3"
    pager.took(_page(None, listed=0))
    assert pager.done


def test_the_pager_refuses_a_commit_short_of_the_block() -> None:
    """A commit of fewer messages than the block listed does not settle it: no token goes out."""
    pager = paging.Pager(None)
    assert pager.next_token() is None
    page = _page("Tok2")
    pager.took(page)
    with pytest.raises(errors.AcknowledgementRefusedError):
        _ticket(page).committed(0)
    with pytest.raises(errors.AcknowledgementRefusedError):
        pager.next_token()
    assert _ticket(page).settled is None


@pytest.mark.parametrize("token", ["", "a" * 65, "ab-c", "ab c", "\u00e9t\u00e9"])
def test_a_request_token_outside_the_rule_is_refused(token: str) -> None:
    """A ``next`` token this worker would send must be 1-64 ASCII letters or digits."""
    with pytest.raises(errors.ValidationError):
        paging.check_request_token(token)
    paging.check_request_token("a" * 64)
