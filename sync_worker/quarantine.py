"""Reading quarantined history blocks again (``sync-worker quarantine replay``).

A block is quarantined with its exact bytes when no attempt could read it, or
when it could not be stored in several consecutive runs. ``read_block`` reads
those bytes with the current code, looking only at the body's top-level
members (``gate.top_level_members``): a ``"messages"`` key nested inside some
other member is never taken for the block's list. The block counts as read
whole, and is marked resolved, only when the whole body was kept, decodes as
one object, and its single top-level ``messages`` member is a non-empty list
(zero messages read proves nothing was recovered). Otherwise it still yields
every complete message of the top-level ``messages`` list before the point
where the body stops being readable (an answer cut short keeps the messages
before the cut), and stays unresolved. ``store.replay_quarantined`` stores what
it returns with the usual message keys, so replays and messages stored since
are absorbed.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sync_worker import gate, models

_WHITESPACE: Final = " \t\n\r"
_DECODER: Final = json.JSONDecoder()


def read_block(account: str, body: bytes, body_size: int) -> tuple[list[models.SMSMessage], str | None]:
    """The readable messages of a kept body, and why the rest is not readable (None: all of it is)."""
    try:
        members = gate.top_level_members(body)
    except (ValueError, RecursionError) as exc:
        problem = _problem(exc)
    else:
        if body_size > len(body):
            problem = "only the first bytes of the body were kept"
        else:
            return _from_members(members)
    messages, _ = _salvage(body)
    return messages, f"{problem}; {len(messages)} complete message(s) read before it stops being readable"


def _from_members(members: list[tuple[str, Any]]) -> tuple[list[models.SMSMessage], str | None]:
    lists = [value for key, value in members if key == "messages"]
    read = [models.SMSMessage.from_wire(m) for value in lists if isinstance(value, list) for m in value]
    if not lists:
        names = ", ".join(repr(k[:40]) for k, _ in members[:5]) or "none"
        return [], f"the body has no top-level 'messages' member (top-level members: {names})"
    if len(lists) > 1:
        # Which one is the block cannot be told: keep every message offered, resolve nothing.
        return read, f"the body has {len(lists)} top-level 'messages' members; their messages were stored"
    if not isinstance(lists[0], list):
        return [], "the body's top-level 'messages' is not a list"
    if not read:
        return [], "the body's top-level 'messages' is empty: nothing of the block was read"
    return read, None


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "body nests deeper than the decoder allows"
    if isinstance(exc, gate.NotAnObjectError):
        return str(exc)
    return "body is not JSON (cut short, not JSON or not UTF-8)"


def _salvage(body: bytes) -> tuple[list[models.SMSMessage], bool]:
    """Complete messages of the top-level ``messages`` array, up to where the body stops being
    readable; True when that array was read to its end."""
    text = _text(body)
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        return [], False
    pos = _skip(text, pos + 1)
    while text.startswith('"', pos):
        try:
            key, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return [], False
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            return [], False
        pos = _skip(text, pos + 1)
        if key == "messages" and text.startswith("[", pos):
            return _array_prefix(text, pos + 1)
        try:
            # Any other member is skipped whole, whatever it nests (a "messages" inside included).
            _, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return [], False
        pos = _skip(text, pos)
        if not text.startswith(",", pos):
            return [], False
        pos = _skip(text, pos + 1)
    return [], False


def _array_prefix(text: str, pos: int) -> tuple[list[models.SMSMessage], bool]:
    messages: list[models.SMSMessage] = []
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        return messages, True
    while pos < len(text):
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return messages, False
        messages.append(models.SMSMessage.from_wire(value))
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return messages, True
        if not text.startswith(",", pos):
            return messages, False
        pos = _skip(text, pos + 1)
    return messages, False


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            # Cut inside a character: everything before it is whole.
            return body[: exc.start].decode("utf-8")
        return ""


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos
