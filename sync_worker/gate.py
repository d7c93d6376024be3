"""The acknowledgement gate: the one place that decides whether a history block may be acknowledged.

The request that carries a block's ``next`` token acknowledges (dequeues) that block at the
platform, so it may be sent only when both of these hold:

1. The answer was positively recognised as the block (``recognise``, which the client runs on
   every 200/202 history answer): the body is one JSON object whose top-level members each
   appear once; ``messages`` is a list; ``hasMoreData`` is a boolean; and status, ``hasMoreData``
   and the ``Location`` token agree: a 202 carries a valid token, ``hasMoreData: true`` and at
   least one message, a 200 (the final block) carries ``hasMoreData: false``. Anything else
   raises ``errors.ResponseFormatError``, which the client treats exactly like garbage: the same
   request again with backoff, then ``errors.MalformedBlockError`` and the quarantine. Unknown
   extra members are allowed, logged once per process per name and counted.
2. The block is settled: its ``Ticket`` was marked by ``store.commit_block`` after the
   transaction holding every message the body listed committed, or by ``store.quarantine_block``
   after the block's bytes were kept.

``release(ticket)`` is the only way paging gets the token it sends next; it raises
``errors.AcknowledgementRefusedError`` for a block that is not settled. The client's
``iter_history_blocks`` and the sync's move past a quarantined block both go through it. A
cursor read back from the database needs no ticket: only those two store functions write one.

The body is decoded by ``top_level_members``: the top level member by member (so a duplicate
member is seen, and nothing below the top level is mistaken for it), each value by the stdlib's
C decoder, as fast as ``json.loads`` of the whole body.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any, Final

import structlog

from sync_worker import errors

KNOWN_MEMBERS: Final = frozenset({"messages", "hasMoreData"})
# Distinct unknown member names reported by name; later ones are "other", so a body cannot
# make new log lines or metric series at will.
MAX_NAMED_UNKNOWN: Final = 32
OTHER_MEMBER: Final = "other"

_DECODER: Final = json.JSONDecoder()
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")  # what the JSON grammar calls whitespace

_log = structlog.get_logger(__name__)
_seen_lock = threading.Lock()
_seen_unknown: set[str] = set()


class NotAnObjectError(ValueError):
    """The body is JSON, but its top level is not an object (``kind`` names what it is)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"the body is a JSON {kind}, not an object")
        self.kind = kind


def top_level_members(body: bytes) -> list[tuple[str, Any]]:
    """The members of a JSON object body in order, duplicates kept, values decoded.

    Accepts exactly what ``json.loads`` accepts (same encodings, whitespace, constants).
    Raises ``NotAnObjectError`` for JSON that is not an object, ``ValueError`` for what is
    not JSON, ``RecursionError`` for nesting deeper than the decoder goes.
    """
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        raise NotAnObjectError(json_type(json.loads(text)))
    members: list[tuple[str, Any]] = []
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return _at_end(text, pos + 1, members)
    while True:
        if not text.startswith('"', pos):
            raise ValueError(f"expecting a member name at character {pos}")
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise ValueError(f"expecting ':' at character {pos}")
        value, pos = _DECODER.raw_decode(text, _skip(text, pos + 1))
        members.append((key, value))
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif text.startswith("}", pos):
            return _at_end(text, pos + 1, members)
        else:
            raise ValueError(f"expecting ',' or '}}' at character {pos}")


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return pos if match is None else match.end()


def _at_end(text: str, pos: int, members: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if _skip(text, pos) != len(text):
        raise ValueError(f"extra data after the object at character {pos}")
    return members


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A body read as a history envelope: its ``messages`` (as decoded), ``hasMoreData`` and
    the names of its unknown top-level members."""

    messages: list[Any]
    has_more_data: bool
    unknown: tuple[str, ...]


def read_envelope(body: bytes) -> Envelope:
    """The body's envelope, or ``errors.ResponseFormatError`` naming why it is not one."""
    try:
        members = top_level_members(body)
    except RecursionError:
        raise errors.ResponseFormatError("history body nests deeper than the decoder allows") from None
    except NotAnObjectError as exc:
        raise errors.ResponseFormatError(f"history body is a JSON {exc.kind}, not an object") from None
    except ValueError:
        raise errors.ResponseFormatError("response body is not JSON") from None
    found = dict(members)
    if len(found) != len(members):
        twice = sorted({k for k, _ in members if sum(1 for n, _ in members if n == k) > 1})
        raise errors.ResponseFormatError(
            f"history body has the top-level member(s) {_names(twice)} more than once"
        )
    if "messages" not in found:
        raise errors.ResponseFormatError(
            f"history body has no top-level 'messages' member (members: {_names(list(found)) or 'none'})"
        )
    messages = found["messages"]
    if not isinstance(messages, list):
        raise errors.ResponseFormatError(
            f"history body 'messages' is a JSON {json_type(messages)}, not a list"
        )
    if "hasMoreData" not in found:
        raise errors.ResponseFormatError("history body has no 'hasMoreData' member")
    has_more = found["hasMoreData"]
    if not isinstance(has_more, bool):
        raise errors.ResponseFormatError(
            f"history body 'hasMoreData' is a JSON {json_type(has_more)}, not a boolean"
        )
    unknown = tuple(k for k in found if k not in KNOWN_MEMBERS) if len(found) > 2 else ()
    return Envelope(messages, has_more, unknown)


def check_paging(status: int, envelope: Envelope, token: str | None) -> None:
    """Status, ``hasMoreData`` and the ``Location`` token agree, or ``errors.ResponseFormatError``."""
    if status == 202:
        if token is None:
            raise errors.ResponseFormatError("history answered 202 without a valid next token")
        if not envelope.has_more_data:
            raise errors.ResponseFormatError("history answered 202 (more waiting) with hasMoreData false")
        if not envelope.messages:
            raise errors.ResponseFormatError("history answered 202 with no message: that is not a block")
    elif status == 200:
        if envelope.has_more_data:
            raise errors.ResponseFormatError("history answered 200 (the final block) with hasMoreData true")
    else:
        raise errors.ResponseFormatError(f"history answered with status {status}, not 200 or 202")


def recognise(status: int, body: bytes, token: str | None) -> Envelope:
    """The whole decision on one answer: its envelope when it is the block, else ``ResponseFormatError``."""
    envelope = read_envelope(body)
    check_paging(status, envelope, token)
    return envelope


def unknown_member_label(name: str) -> str:
    """The name an unknown top-level member is reported under; logs its first sighting in this process."""
    with _seen_lock:
        if name in _seen_unknown:
            return name
        if len(_seen_unknown) >= MAX_NAMED_UNKNOWN:
            return OTHER_MEMBER
        _seen_unknown.add(name)
    _log.warning(
        "thingspace_history_unknown_member",
        member=name[:64],
        note="read as the block anyway; logged once per process, counted every time",
    )
    return name


class Ticket:
    """One block on its way to acknowledgement: the token that acknowledges it, how many messages
    its body listed, and whether it is settled (committed or quarantined)."""

    __slots__ = ("_settled", "listed", "token")

    def __init__(self, token: str | None, listed: int | None) -> None:
        self.token = token
        # None: the body was never read (a quarantined answer); only quarantining settles it.
        self.listed = listed
        self._settled: str | None = None

    def committed(self, stored: int) -> None:
        """``store.commit_block``: a committed transaction wrote ``stored`` rows from the block."""
        if self.listed is None or stored != self.listed:
            raise errors.AcknowledgementRefusedError(
                f"a commit of {stored} message(s) does not settle a block that listed "
                f"{'an unread number of' if self.listed is None else self.listed} message(s)"
            )
        self._settled = "committed"

    def quarantined(self) -> None:
        """``store.quarantine_block``: the block's bytes are kept and its quarantine committed."""
        self._settled = "quarantined"

    def acknowledge_unstored(self) -> None:
        """For readers that keep nothing (tests, benchmarks): lets paging go past without storing.

        The worker never calls it (``tests/unit/test_gate.py`` checks).
        """
        self._settled = "unstored"

    @property
    def settled(self) -> str | None:
        return self._settled

    def __repr__(self) -> str:
        return f"Ticket(listed={self.listed}, settled={self._settled})"


def release(ticket: Ticket | None) -> str:
    """The token the acknowledging request may carry; ``errors.AcknowledgementRefusedError`` unless
    the block is settled."""
    if ticket is None or ticket.settled is None:
        raise errors.AcknowledgementRefusedError(
            "the block is neither committed nor quarantined; its next token is not sent"
        )
    if ticket.token is None:
        raise errors.AcknowledgementRefusedError("the final block has no next token to acknowledge it")
    return ticket.token


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n[:40]) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def json_type(value: Any) -> str:
    """A decoded JSON value's type as JSON names it ("array", "object"...), for problem texts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
