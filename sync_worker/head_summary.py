"""A history answer summarised without its texts or device ids (``summarise``), and the lines and
notes ``sync-worker doctor`` prints for it: what the real API sends, in a form safe to show."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sync_worker import errors, gate, models, rows

# The documented members of an SMSMessage (vendor SDK); anything else in a message is listed.
MESSAGE_MEMBERS: Final = frozenset({"deviceIds", "message", "timestamp"})
_SHOWN: Final = 8  # distinct values listed per summary line before "and N more"
_STAMP_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?P<seconds>:\d{2}(?P<fraction>[.,]\d+)?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2}|[+-]\d{4}|[+-]\d{2})?"
)


def summarise(status_code: int, body: bytes, *, has_token: bool) -> dict[str, Any]:
    """What a history answer holds, without its texts or device ids: status, members, message
    count, members of the messages, timestamp forms, device kinds, and whether the gate reads it."""
    out: dict[str, Any] = {"status": status_code, "next_token": has_token, "body_bytes": len(body)}
    try:
        gate.recognise(status_code, body, "token" if has_token else None)
        out["readable"], out["problem"] = True, None
    except errors.ResponseFormatError as exc:
        out["readable"], out["problem"] = False, str(exc)
    try:
        members = gate.top_level_members(body)
    except (ValueError, RecursionError):
        out["members"] = None
        return out
    names = [name for name, _ in members]
    out["members"] = names
    out["unknown_members"] = [n for n in dict.fromkeys(names) if n not in gate.KNOWN_MEMBERS]
    found = dict(members)
    if isinstance(found.get("hasMoreData"), bool):
        out["has_more_data"] = found["hasMoreData"]
    messages = found.get("messages")
    if not isinstance(messages, list):
        return out
    out["messages"] = len(messages)
    out.update(_messages_summary(messages))
    return out


def _messages_summary(messages: list[Any]) -> dict[str, Any]:
    message_members: collections.Counter[str] = collections.Counter()
    forms: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    not_objects = 0
    for item in messages:
        if not isinstance(item, dict):
            not_objects += 1
            continue
        message_members.update(item.keys())
        forms[timestamp_form(item["timestamp"]) if "timestamp" in item else "missing"] += 1
        devices = item.get("deviceIds")
        for device in devices if isinstance(devices, list) else ():
            kind = device.get("kind") if isinstance(device, dict) else None
            kinds[kind if isinstance(kind, str) else "(not a string)"] += 1
    try:
        malformed = rows.build_block("doctor", models.Messages(messages)).malformed
    except Exception:  # a summary must not fail where the write path would quarantine
        malformed = ()
    problems: collections.Counter[str] = collections.Counter(p for _, ps in malformed for p in ps)
    return {
        "not_objects": not_objects,
        "message_members": dict(message_members.most_common()),
        "unknown_message_members": sorted(m for m in message_members if m not in MESSAGE_MEMBERS),
        "timestamp_forms": dict(forms.most_common()),
        "device_kinds": dict(kinds.most_common()),
        "unknown_device_kinds": sorted(k for k in kinds if k.lower() not in models.DEVICE_KINDS),
        "malformed": len(malformed),
        "problems": dict(problems.most_common(_SHOWN)),
    }


def timestamp_form(value: Any) -> str:
    """How a timestamp is written, e.g. ``±hh:mm offset``, ``Z, 3 fractional digits``, ``no zone``."""
    if not isinstance(value, str):
        return "not a string"
    match = _STAMP_RE.fullmatch(value)
    if match is None:
        return "not ISO-8601"
    zone = match.group("zone")
    if zone is None:
        label = "no zone"
    elif zone in ("Z", "z"):
        label = "Z"
    elif len(zone) == 6:
        label = "±hh:mm offset"
    else:
        label = "±hhmm offset" if len(zone) == 5 else "±hh offset"
    fraction = match.group("fraction")
    if match.group("seconds") is None:
        label += ", no seconds"
    if fraction:
        label += f", {len(fraction) - 1} fractional digits"
    return label


def notes(summary: Mapping[str, Any]) -> list[str]:
    """What in a readable block deserves a look (the worker stores it all the same)."""
    notes = []
    if summary.get("unknown_members"):
        notes.append(f"unknown top-level member(s) {_names(summary['unknown_members'])}")
    if summary.get("unknown_message_members"):
        notes.append(f"unknown message member(s) {_names(summary['unknown_message_members'])}")
    if summary.get("unknown_device_kinds"):
        notes.append(f"unknown device kind(s) {_names(summary['unknown_device_kinds'])}")
    odd = [f for f in summary.get("timestamp_forms", {}) if "offset" not in f and not f.startswith("Z")]
    if odd:
        notes.append(f"timestamp form(s) {_names(odd)}")
    if summary.get("malformed"):
        notes.append(f"{summary['malformed']} malformed message(s) (stored with their problems)")
    return notes


def describe_block(summary: Mapping[str, Any]) -> list[str]:
    """The head block summary as the lines the table prints under it."""
    lines = [
        f"status {summary['status']}, hasMoreData {json.dumps(summary.get('has_more_data'))}, "
        f"{summary.get('messages', '?')} message(s), {summary['body_bytes']} bytes, "
        + ("readable as a block" if summary["readable"] else f"NOT readable as a block: {summary['problem']}")
    ]
    if summary.get("members") is None:
        lines.append("top-level members: (not a JSON object)")
        return lines
    unknown = summary.get("unknown_members") or []
    lines.append(
        f"top-level members: {', '.join(summary['members'])}"
        + (f" (unknown: {', '.join(unknown)})" if unknown else " (all known)")
    )
    for key, title in (
        ("message_members", "message members"),
        ("timestamp_forms", "timestamp forms"),
        ("device_kinds", "device kinds"),
        ("problems", "problems"),
    ):
        counted = summary.get(key)
        if counted:
            lines.append(f"{title}: {_counted(counted)}")
    for key, title in (
        ("unknown_message_members", "unknown message members"),
        ("unknown_device_kinds", "unknown device kinds"),
    ):
        if summary.get(key):
            lines.append(f"{title}: {', '.join(summary[key])}")
    return lines


def _counted(counted: Mapping[str, int]) -> str:
    items = list(counted.items())
    shown = ", ".join(f"{name} {n}" for name, n in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n[:40]) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


# --- callbacks ------------------------------------------------------------------------------
