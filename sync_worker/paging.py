"""History paging: which answer is the block, and which token may be sent next. No HTTP here.

The request that carries a block's ``next`` token acknowledges (dequeues) that block at the
platform, so these rules decide what the client may send; ``controllers`` only moves bytes:

* ``Location`` is never followed: only its ``next`` query value is taken
  (``next_token_from_location``), the path is ignored, and an absolute ``Location`` must name the
  base URL's scheme, host and port. A token is 1-``MAX_TOKEN_LENGTH`` letters or digits.
* A 200/202 answer is the block only when ``gate.recognise`` says so: a 202 carries a valid token
  in ``Location``, ``hasMoreData: true`` and at least one message; a 200 is the final block
  (``next`` None) with ``hasMoreData: false``. Unknown extra top-level members are read past,
  logged once per process per name and counted (``on_unknown``).
* Any other 200/202 answer (cut short, not JSON, over the size cap, not the envelope, status and
  ``hasMoreData`` disagreeing...) is unreadable: ``errors.UnreadableAnswerError``, transient, so
  the *same* request is sent again under the retry policy, and the unreadable answer's token is
  never followed. Only when every attempt came back unreadable does ``after_attempts`` turn it
  into ``errors.MalformedBlockError`` (the bytes and the block's ``next``), which the sync
  quarantines before moving on. Attempts cut short (deadline, a ``Retry-After`` cap) leave it
  transient: a later run asks again. A bad or missing ``Location`` is never quarantinable
  (nothing could be acknowledged safely): ``errors.UnsafeLocationError`` fails the run.
* Only what is kept byte for byte is quarantined: a body over the size cap (only its first bytes
  were read) or over ``errors.MalformedBlockError.MAX_KEPT_BODY`` is asked for again like any
  unreadable answer, then fails the run (``errors.ResponseFormatError``) and stays queued at the
  platform: its token would acknowledge messages past the kept bytes.
* ``Pager`` hands out the token each request carries: the first request's own, then only what
  ``gate.release(page.ticket)`` lets out, i.e. once ``store.commit_block`` committed the block's
  messages or ``store.quarantine_block`` kept it; otherwise ``errors.AcknowledgementRefusedError``
  and nothing is sent. After the final block it hands out nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from collections.abc import Callable
from typing import Final, Literal

from sync_worker import errors, gate, models

MAX_TOKEN_LENGTH: Final = 64
OPERATION: Final = "list_devices_sms_messages"
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9]+")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What str.isspace() calls whitespace, the C0 controls and DEL: none belongs in a Location.
_UNSAFE_LOCATION_RE: Final = re.compile(r"[\s\x00-\x1f\x7f]")

Kind = Literal["block", "final", "unreadable", "refused"]


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx history answer as paging reads it: the status, the ``Location`` header (None: absent),
    the body, and the size cap the body went over (None: read whole; else only its first bytes)."""

    status: int
    location: str | None
    body: bytes
    over_cap: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What one answer is: ``page`` (the block: store it, then ``Pager`` releases its token), or
    ``error`` to raise (``UnreadableAnswerError``: ask again; any other: paging cannot go on)."""

    page: models.HistoryPage | None = None
    error: errors.ApiError | None = None

    @property
    def kind(self) -> Kind:
        if self.page is not None:
            return "block" if self.page.next is not None else "final"
        return "unreadable" if isinstance(self.error, errors.UnreadableAnswerError) else "refused"


def valid_token(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH and _TOKEN_RE.fullmatch(token) is not None


def check_request_token(token: str) -> None:
    """A token this worker may send as ``next``, or ``errors.ValidationError``."""
    if not valid_token(token):
        raise errors.ValidationError(
            f"next token {_preview(token)} is not 1-{MAX_TOKEN_LENGTH} letters or digits"
        )


def next_token_from_location(location: str, base_url: str) -> str:
    """The ``next`` query value of a history ``Location``; the rest of it is never used."""
    if _UNSAFE_LOCATION_RE.search(location) is not None:
        raise errors.UnsafeLocationError("Location contains whitespace or control characters")
    try:
        target = urllib.parse.urlsplit(location)
        base = _split_base(base_url)
        foreign = (
            target.scheme.lower() != base.scheme.lower()
            or (target.hostname or "") != (base.hostname or "")
            or _port(target) != _port(base)
            or target.username is not None
            or target.password is not None
        )
        if (target.scheme or target.netloc) and foreign:
            raise errors.UnsafeLocationError("Location points at another scheme, host or port")
    except ValueError as exc:
        raise errors.UnsafeLocationError("Location is not a valid URL") from exc
    values = urllib.parse.parse_qs(target.query, keep_blank_values=True).get("next", [])
    if len(values) != 1:
        raise errors.UnsafeLocationError(
            "Location has no next token" if not values else "Location has more than one next token"
        )
    token = values[0]
    if not valid_token(token):
        raise errors.UnsafeLocationError(
            f"Location next token {_preview(token)} is not 1-{MAX_TOKEN_LENGTH} letters or digits"
        )
    return token


def decide(
    answer: Answer,
    *,
    account_name: str,
    request_next: str | None,
    base_url: str,
    on_unknown: Callable[[str], None] | None = None,
) -> Decision:
    """The whole decision on one 2xx history answer (the rules above); raises nothing."""
    status = answer.status
    if status not in (200, 202):
        return Decision(
            error=errors.ResponseFormatError(
                "history answered with an unexpected success status", status=status, operation=OPERATION
            )
        )
    new_next: str | None = None
    paging_error: errors.ResponseFormatError | None = None
    if status == 202:
        try:
            if answer.location is None:
                raise errors.UnsafeLocationError("history answered 202 without a Location header")
            new_next = next_token_from_location(answer.location, base_url)
        except errors.UnsafeLocationError as exc:
            paging_error = errors.UnsafeLocationError(str(exc), status=status, operation=OPERATION)
    body = answer.body
    try:
        if answer.over_cap is not None:
            # Only the first bytes were kept: whatever they parse as, they are not the block.
            raise errors.ResponseFormatError(f"history body is larger than {answer.over_cap} bytes")
        envelope = gate.read_envelope(body)
        if paging_error is not None:
            # A readable body with a bad Location: nothing can be acknowledged safely, and
            # asking again would not make the Location any safer.
            return Decision(error=paging_error)
        gate.check_paging(status, envelope, new_next)
    except errors.ResponseFormatError as exc:
        problem = str(exc.args[0]) if exc.args else "history body does not have the documented shape"
        partial = _kept_in_part(answer)
        if partial is not None and paging_error is None:
            # The quarantine would keep only part of the block while its token acknowledged the
            # whole of it: the messages past the kept bytes would be lost. Asked again, then the
            # run fails with the block still queued at the platform.
            paging_error = errors.ResponseFormatError(partial, status=status, operation=OPERATION)
        block = errors.MalformedBlockError(
            f"history block body is unreadable: {problem}",
            body=body,
            problem=problem,
            next_token=new_next,
            request_next=request_next,
            status=status,
            operation=OPERATION,
        )
        # An answer cut short or replaced on the way is usually fine on the next
        # try; its Location is not trusted (or followed) until its body is.
        unreadable = errors.UnreadableAnswerError(
            f"history answer is unreadable: {problem}",
            block=block,
            paging_error=paging_error,
            status=status,
            operation=OPERATION,
        )
        unreadable.__cause__ = exc
        return Decision(error=unreadable)
    if envelope.unknown:
        for name in envelope.unknown:
            label = gate.unknown_member_label(name)
            if on_unknown is not None:
                on_unknown(label)
    return Decision(
        page=models.HistoryPage(
            account_name=account_name,
            # Read into SMSMessage objects only when someone asks; the write path reads the records.
            messages=models.Messages(envelope.messages),
            has_more_data=envelope.has_more_data,
            status=status,
            next=new_next,
            request_next=request_next,
            body=body,
            ticket=gate.Ticket(new_next, len(envelope.messages)),
        )
    )


def read(
    answer: Answer,
    *,
    account_name: str,
    request_next: str | None,
    base_url: str,
    on_unknown: Callable[[str], None] | None = None,
) -> models.HistoryPage:
    """``decide``'s page, or its error raised (an unreadable answer: ``UnreadableAnswerError``)."""
    decision = decide(
        answer, account_name=account_name, request_next=request_next, base_url=base_url, on_unknown=on_unknown
    )
    if decision.error is not None:
        raise decision.error
    if decision.page is None:  # decide sets one of the two
        raise errors.ResponseFormatError("history answer decided as neither a page nor an error")
    return decision.page


def after_attempts(exc: errors.UnreadableAnswerError, *, max_attempts: int) -> errors.ApiError:
    """What an unreadable answer becomes once the retry policy stopped asking again.

    Attempts cut short (the deadline, a ``Retry-After`` over the cap): ``exc`` itself, transient,
    so a later run asks again rather than give up on the block. Every attempt unreadable: the
    paging error when the answer's paging was unusable too (nothing can be acknowledged), else
    the ``MalformedBlockError`` the sync quarantines.
    """
    if exc.attempts < max_attempts:
        return exc
    if exc.paging_error is not None:
        return exc.paging_error
    return exc.block


class Pager:
    """One walk through an account's history: the token each request carries, and when it ends."""

    def __init__(self, start: str | None) -> None:
        self._start = start
        self._last: models.HistoryPage | None = None

    @property
    def done(self) -> bool:
        """True after the final block: nothing more is asked for."""
        return self._last is not None and self._last.next is None

    def next_token(self) -> str | None:
        """The token the next request carries (None: the head of the queue).

        After a block, that request acknowledges it: the gate lets its token out only once the
        caller committed (or quarantined) the block, else ``errors.AcknowledgementRefusedError``.
        """
        if self._last is None:
            return self._start
        return gate.release(self._last.ticket)

    def took(self, page: models.HistoryPage) -> None:
        """``page`` is the answer to the request that carried ``next_token()``."""
        self._last = page


def _kept_in_part(answer: Answer) -> str | None:
    """Why a quarantine could not keep ``answer``'s body byte for byte (None: it could)."""
    if answer.over_cap is not None:
        return (
            f"history body is larger than {answer.over_cap} bytes: only its first bytes were read, "
            "so it cannot be kept byte for byte in the quarantine; not acknowledged"
        )
    if len(answer.body) > errors.MalformedBlockError.MAX_KEPT_BODY:
        return (
            f"history body is larger than the quarantine keeps ({errors.MalformedBlockError.MAX_KEPT_BODY} "
            "bytes), so it cannot be kept byte for byte; not acknowledged"
        )
    return None


@functools.lru_cache(maxsize=16)
def _split_base(base_url: str) -> urllib.parse.SplitResult:
    # The base URL is the same for every block a client pages through.
    return urllib.parse.urlsplit(base_url)


def _port(parts: urllib.parse.SplitResult) -> int | None:
    return parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme.lower())


def _preview(value: str) -> str:
    return repr(value if len(value) <= 24 else value[:24] + "...") + f" (length {len(value)})"
