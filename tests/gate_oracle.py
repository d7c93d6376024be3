"""Mutated history answers and an oracle of the acknowledgement gate, shared by its property tests.

The oracle is written independently of ``sync_worker.gate``: the whole body through ``json.loads`` with an
``object_pairs_hook`` (the outermost object completes last, so the hook's last call holds the top-level
members), then the documented rules. ``answers()`` mutates the documented envelope: members dropped,
renamed, retyped or duplicated, extra members (some nesting a ``messages`` list), status / ``hasMoreData``
/ ``Location`` disagreements, odd whitespace, truncation and whole-body replacements.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import strategies as st

_MISSING = object()


def recognised(status: int, body: bytes, token: str | None) -> list[Any] | None:
    """The messages the answer lists when it is the block by the documented rules, else None."""
    calls: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        calls.append(pairs)
        return dict(pairs)

    try:
        value = json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    names = [name for name, _ in calls[-1]]
    if len(set(names)) != len(names):
        return None
    messages, more = value.get("messages", _MISSING), value.get("hasMoreData", _MISSING)
    if type(messages) is not list or type(more) is not bool:
        return None
    if status == 202:
        return messages if token is not None and more and messages else None
    if status == 200:
        return None if more else messages
    return None


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    keep_location: bool  # False: the Location header is removed (a 202 then has no token)


def envelope_body(members: list[tuple[str, Any]], spaced: bool = False) -> bytes:
    """An object written member by member, so duplicates stay (``json.dumps`` of a dict cannot)."""
    sep = ", " if spaced else ","
    colon = " : " if spaced else ":"
    text = "{" + sep.join(json.dumps(k) + colon + json.dumps(v) for k, v in members) + "}"
    return ((" \n" + text + "\t") if spaced else text).encode()


_ODD_NAMES = st.sampled_from(
    [
        "smsMessages",
        "Messages",
        "message",
        "messages ",
        "MESSAGES",
        "hasmoredata",
        "HasMoreData",
        "more",
        "data",
    ]
)
_ODD_VALUES = st.sampled_from([None, "true", "false", 1, 0, 1.5, "x", [], {}, [1], {"a": 1}])


@st.composite
def answers(draw: st.DrawFn, status: int, members: list[tuple[str, Any]]) -> Answer:
    """A mutation of one real answer (``status`` and its envelope ``members``)."""
    members = list(members)
    keep_location = True
    messages = dict(members).get("messages", [])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(_OPS))
        if op == "status":
            status = 200 if status == 202 else 202
        elif op == "location":
            keep_location = not keep_location
        else:
            members = _members_op(draw, op, members, messages)
    body = envelope_body(members, spaced=draw(st.booleans()))
    whole = draw(st.sampled_from(["keep"] * 8 + ["cut", "replace"]))
    if whole == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif whole == "replace":
        body = draw(st.sampled_from([b"", b"{}", b"null", b"[]", b"<html>502</html>", b'{"messages":[]}']))
    return Answer(status, body, keep_location)


_OPS = ("drop", "rename", "retype", "duplicate", "extra", "status", "flip_more", "location", "empty")


def _members_op(
    draw: st.DrawFn, op: str, members: list[tuple[str, Any]], messages: Any
) -> list[tuple[str, Any]]:
    members = list(members)
    if op == "flip_more":
        return [(k, (not v) if k == "hasMoreData" and type(v) is bool else v) for k, v in members]
    if op == "empty":
        return [(k, [] if k == "messages" else v) for k, v in members]
    if op == "extra":
        name = draw(_ODD_NAMES | st.sampled_from(["requestId", "meta", "x"]))
        value: Any = draw(_ODD_VALUES | st.just({"messages": messages}) | st.just([{"messages": []}]))
        members.insert(draw(st.integers(0, len(members))), (name, value))
        return members
    if not members:
        return members
    i = draw(st.integers(0, len(members) - 1))
    if op == "drop":
        del members[i]
    elif op == "rename":
        members[i] = (draw(_ODD_NAMES), members[i][1])
    elif op == "retype":
        members[i] = (members[i][0], draw(_ODD_VALUES | st.just({"messages": messages})))
    else:  # duplicate: the same name again, before or after, with the same or another value
        value = draw(st.sampled_from([[], messages, True, False, members[i][1]]))
        members.insert(draw(st.integers(0, len(members))), (members[i][0], value))
    return members
