"""A grammar of history answers that are not quite the documented envelope, and of ``Location`` variants.

The documented block is ``{"hasMoreData": bool, "messages": [...]}`` with status 202 and a
``Location: /sms/{aname}/history?next=T`` while more wait, 200 without one for the last. Every form
here keeps the block's message bytes somewhere in the body or makes the body plainly not that
envelope: a worker that reads the block must be able to tell. Forms that silently swap messages for
other content are left out on purpose, since no client could notice those.

Each form takes a ``variant`` (an int drawn by the schedule) for its free choices, so one schedule
always produces the same bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from sync_worker import simulator
from sync_worker.simulator import wire

FORMS: Final = (
    "drop_messages",
    "rename_messages",
    "drop_has_more",
    "rename_has_more",
    "retype_messages",
    "retype_has_more",
    "duplicate_empty_after",
    "duplicate_empty_before",
    "has_more_flipped",
    "status_flipped",
    "truncate",
    "huge_member",
    "deep_member",
    "extra_member",
    "empty_object",
    "not_object",
    "wrapped",
)
LOCATIONS: Final = (
    "absolute_same",
    "absolute_localhost",
    "foreign_host",
    "other_port",
    "https_scheme",
    "userinfo",
    "two_tokens",
    "bad_token",
    "empty_token",
    "whitespace",
    "other_path",
    "missing",
)
_RENAMED_MESSAGES: Final = ("smsMessages", "Messages", "message", "data", "messages ")
_RENAMED_HAS_MORE: Final = ("hasMore", "HasMoreData", "more", "has_more_data")
_RETYPED: Final[tuple[Any, ...]] = (None, "[]", 0, True, {"0": None})
_RETYPED_BOOL: Final[tuple[Any, ...]] = ("true", 1, None, "false", 0, [])
_NOT_OBJECT: Final = (b"[]", b"null", b'"messages"', b"0", b"true")
_NEXT_RE: Final = re.compile(r"next=([A-Za-z0-9]+)")


def _dumps(obj: Any) -> bytes:
    # The simulator's own serialisation: message bytes stay exactly as queued.
    return wire.dumps(obj)


def apply(form: str, variant: int, answer: simulator.Answer) -> simulator.Answer:  # noqa: PLR0912
    """``answer`` (a processed history answer) rewritten into ``form``."""
    status, body, headers = answer.status, answer.body, answer.headers
    try:
        obj = json.loads(body)
    except ValueError:
        return answer
    if not isinstance(obj, dict):
        return answer
    messages = obj.get("messages", [])
    has_more = obj.get("hasMoreData", False)
    if form == "drop_messages":
        return _with(answer, body=_dumps({"hasMoreData": has_more}))
    if form == "rename_messages":
        name = _RENAMED_MESSAGES[variant % len(_RENAMED_MESSAGES)]
        return _with(answer, body=_dumps({"hasMoreData": has_more, name: messages}))
    if form == "drop_has_more":
        return _with(answer, body=_dumps({"messages": messages}))
    if form == "rename_has_more":
        name = _RENAMED_HAS_MORE[variant % len(_RENAMED_HAS_MORE)]
        return _with(answer, body=_dumps({name: has_more, "messages": messages}))
    if form == "retype_messages":
        kept = {"hasMoreData": has_more, "messages": _RETYPED[variant % len(_RETYPED)]}
        # The messages stay in the body, under a member nobody documented.
        kept["kept"] = messages
        return _with(answer, body=_dumps(kept))
    if form == "retype_has_more":
        value = _RETYPED_BOOL[variant % len(_RETYPED_BOOL)]
        return _with(answer, body=_dumps({"hasMoreData": value, "messages": messages}))
    if form == "duplicate_empty_after":
        return _with(answer, body=body[:-1] + b',"messages":[]}')
    if form == "duplicate_empty_before":
        return _with(answer, body=b'{"messages":[],' + body[1:])
    if form == "has_more_flipped":
        return _with(answer, body=_dumps({"hasMoreData": not has_more, "messages": messages}))
    if form == "status_flipped":
        if status == 202:
            return simulator.Answer(200, body, _without_location(headers))
        token = simulator.new_token()
        return simulator.Answer(202, body, (*headers, ("Location", f"/sms/x/history?next={token}")))
    if form == "truncate":
        cut = 1 + variant % max(1, len(body) - 1)
        return _with(answer, body=body[:cut])
    if form == "huge_member":
        size = (1 + variant % 4) << 19
        return _with(answer, body=body[:-1] + b',"padding":"' + b"x" * size + b'"}')
    if form == "deep_member":
        depth = 50 + (variant * 7) % 3000
        return _with(answer, body=body[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}")
    if form == "extra_member":
        return _with(answer, body=body[:-1] + b',"requestId":"' + str(variant).encode() + b'"}')
    if form == "empty_object":
        return _with(answer, body=b"{}")
    if form == "not_object":
        return _with(answer, body=_NOT_OBJECT[variant % len(_NOT_OBJECT)])
    if form == "wrapped":
        return _with(answer, body=b'{"result":' + body + b"}")
    raise ValueError(f"unknown envelope form {form!r}")


def location(  # noqa: PLR0912  # one branch per form
    form: str, variant: int, answer: simulator.Answer, origin: str
) -> simulator.Answer:
    """``answer`` with its ``Location`` in ``form``; ``origin`` is the simulator's ``http://host:port``."""
    current = next((v for n, v in answer.headers if n.lower() == "location"), None)
    if current is None:
        # A final block that names a next token anyway: status and Location disagree.
        current = f"/sms/x/history?next={simulator.new_token()}"
    token_match = _NEXT_RE.search(current)
    token = token_match.group(1) if token_match else simulator.new_token()
    path = current if current.startswith("/") else "/" + current.split("/", 3)[-1]
    host, _, port = origin.removeprefix("http://").partition(":")
    if form == "absolute_same":
        return answer.with_header("Location", f"{origin}/api/m2m/v1{path}")
    if form == "absolute_localhost":
        return answer.with_header("Location", f"http://localhost:{port}/api/m2m/v1{path}")
    if form == "foreign_host":
        hosts = ("evil.example", "thingspace.verizon.com.evil.example", "169.254.169.254")
        return answer.with_header("Location", f"https://{hosts[variant % 3]}/api/m2m/v1{path}")
    if form == "other_port":
        return answer.with_header("Location", f"http://{host}:{int(port) + 1}/api/m2m/v1{path}")
    if form == "https_scheme":
        return answer.with_header("Location", f"https://{host}:{port}/api/m2m/v1{path}")
    if form == "userinfo":
        return answer.with_header("Location", f"http://user:pw@{host}:{port}/api/m2m/v1{path}")
    if form == "two_tokens":
        return answer.with_header("Location", f"{path}&next={simulator.new_token()}")
    if form == "bad_token":
        bad = ("abc$def", "x" * 65, "%41%42", "tok en")[variant % 4]
        return answer.with_header("Location", path.replace(token, bad))
    if form == "empty_token":
        return answer.with_header("Location", path.replace(f"next={token}", "next="))
    if form == "whitespace":
        return answer.with_header("Location", path + "\t")
    if form == "other_path":
        return answer.with_header("Location", f"/somewhere/else?next={token}")
    if form == "missing":
        return simulator.Answer(answer.status, answer.body, _without_location(answer.headers))
    raise ValueError(f"unknown Location form {form!r}")


def _with(answer: simulator.Answer, *, body: bytes) -> simulator.Answer:
    return simulator.Answer(answer.status, body, answer.headers)


def _without_location(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((n, v) for n, v in headers if n.lower() != "location")
