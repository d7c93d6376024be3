"""Reading quarantined history blocks again (``sync-worker quarantine replay``).

A block is quarantined with its exact bytes when no attempt could read it, or
when it could not be stored in several consecutive runs. ``read_block`` reads
those bytes with the current code: the whole block when it is readable now (a
parser fix, a bug fixed since), else every complete message before the point
where it stops being readable (an answer cut short keeps the messages before
the cut). ``store.replay_quarantined`` stores what it returns with the usual
message keys, so replays and messages stored since are absorbed.
"""

from __future__ import annotations

import json
import re
from typing import Final

from sync_worker import errors, models

_MESSAGES_RE: Final = re.compile(r'"messages"\s*:\s*\[')
_WHITESPACE: Final = " \t\n\r"


def read_block(account: str, body: bytes, body_size: int) -> tuple[list[models.SMSMessage], str | None]:
    """The readable messages of a kept body, and why the rest is not readable (None: all of it is)."""
    kept_whole = body_size <= len(body)
    try:
        wire = json.loads(body)
        result = models.SMSMessagesQueryResult.from_wire(wire)
    except (ValueError, RecursionError, errors.ResponseFormatError) as exc:
        problem = _problem(exc)
    else:
        if kept_whole:
            return list(result.messages), None
        problem = "only the first bytes of the body were kept"
    messages, complete = _salvage(body)
    if complete and kept_whole:
        # The message list is whole; only the envelope around it was wrong (hasMoreData, ...),
        # which paging needed but a replay does not.
        return messages, None
    where = "no readable message list" if not messages and not complete else f"{len(messages)} complete"
    return messages, f"{problem}; {where} message(s) read before it stops being readable"


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "body nests deeper than the decoder allows"
    if isinstance(exc, errors.ResponseFormatError):
        return str(exc.args[0]) if exc.args else "wrong envelope"
    return "body is not JSON (cut short, not JSON or not UTF-8)"


def _salvage(body: bytes) -> tuple[list[models.SMSMessage], bool]:
    """Complete messages from the start of the ``messages`` array; True when the array is whole."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return [], False
    if not text.lstrip().startswith("{"):
        return [], False
    match = _MESSAGES_RE.search(text)
    if match is None:
        return [], False
    decoder = json.JSONDecoder()
    pos = _skip(text, match.end())
    messages: list[models.SMSMessage] = []
    if text.startswith("]", pos):
        return messages, True
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
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


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos
