"""Message identity: ``message_key``, the key a message gets from what it says.

The API gives messages no id, so ``message_key`` derives one (see docs/schema.md, "Message
identity"): the sha256 of a canonical JSON text of the account, the devices, the instant and the
text (every other non-null member too), and an occurrence number for identical messages in one
block. Stored keys depend on every byte of that text, so nothing here changes without a
migration. Also here, because the key is built from them: text clean-up (``clean_text``), the
strict timestamp parser (``parse_timestamp``) and a JSON encoder for values of any depth (``dumps``).

Nothing here recurses on message content: a value the decoder accepted may be nested almost a
thousand levels deep, and the C encoder and any recursive walk would hit the interpreter's
recursion limit on it. Values nested deeper than ``MAX_NESTING`` are serialised by an iterative
encoder (same text as ``json.dumps``); shallower ones take the usual C-implemented path, so
message keys of ordinary messages never change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import json.encoder
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sync_worker import models

REPLACEMENT: Final = "\ufffd"
# NUL is refused by Postgres text and jsonb; lone surrogates cannot be encoded as UTF-8.
_BAD_CHARS_RE: Final = re.compile("[\x00\ud800-\udfff]")
_UTC: Final = dt.UTC
_WELL_FORMED_TAG: Final = "sms-v1"
_RAW_TAG: Final = "sms-raw-v1"
# The C string encoder json.dumps(ensure_ascii=True) itself uses: the same escapes, without
# building a JSONEncoder per call (that setup cost more than encoding a whole message).
encode_str: Final = json.encoder.encode_basestring_ascii
# Deeper values are encoded iteratively and not offered to jsonb; far below the recursion limit
# so the C encoder is safe however deep the calling stack is.
MAX_NESTING: Final = 100
# The members of a device object the model knows.
DEVICE_KEYS: Final = ("id", "kind")
# The timestamp forms a message may carry (ISO-8601 calendar dates, extended or basic, with an
# optional time and offset); anything else is a problem, whatever datetime.fromisoformat would
# make of it (its C parser stops at a NUL and takes any character between date and time).
# Groups 1 and 2: the fraction of a second, as sent.
_TIMESTAMP_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,]([0-9]+))?)?)?(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
    r"|[0-9]{8}"
    r"(?:T[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[.,]([0-9]+))?)?)?(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_MICRO_DIGITS: Final = 6
# Members of a message that do not take part in its identity beyond the core fields: the
# account (already in the key, and named inside pushed messages only). See _identity_members.
_CORE_MEMBERS: Final = frozenset({"deviceIds", "message", "timestamp"})
_NOT_IDENTITY: Final = frozenset({"accountName"})


def clean_text(value: str) -> tuple[str, bool]:
    """``value`` with NUL and lone surrogates replaced by U+FFFD, and whether it changed."""
    if value.isascii():
        if "\x00" not in value:
            return value, False
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _BAD_CHARS_RE.sub(REPLACEMENT, value), True
        if "\x00" not in value:
            return value, False
    return value.replace("\x00", REPLACEMENT), True


def dump_raw(raw: Any) -> str:
    """The exact original as ASCII JSON text: round-trips NULs, lone surrogates and NaN."""
    return dumps(raw)


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """Levels of arrays/objects in ``value`` (a scalar is 0), counted up to ``limit + 1``; iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """``json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=...)``, any depth."""
    if nesting_depth(value) <= MAX_NESTING:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys)
    return dumps_iterative(value, sort_keys=sort_keys)


def dumps_iterative(value: Any, *, sort_keys: bool) -> str:
    # The stack holds values to encode and literal text (wrapped in a 1-tuple) to emit.
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is tuple and len(item) == 1:
            parts.append(item[0])
        elif isinstance(item, dict):
            pairs = sorted(item.items()) if sort_keys else list(item.items())
            stack.append(("}",))
            for i in range(len(pairs) - 1, -1, -1):
                key, child = pairs[i]
                stack.append(child)
                prefix = "{" if i == 0 else ","
                stack.append((f"{prefix}{encode_str(str(key))}:",))
            if not pairs:
                stack[-1] = ("{}",)
        elif isinstance(item, (list, tuple)):
            stack.append(("]",))
            for i in range(len(item) - 1, -1, -1):
                stack.append(item[i])
                stack.append(("[" if i == 0 else ",",))
            if not item:
                stack[-1] = ("[]",)
        else:
            parts.append(json.dumps(item, ensure_ascii=True))
    return "".join(parts)


def parse_timestamp(raw: str) -> tuple[dt.datetime | None, str | None]:
    """Parse an ISO-8601 timestamp into an aware UTC datetime (microseconds), plus a problem if any.

    Strict: the whole string must be one of the forms ``_TIMESTAMP_RE`` lists (a NUL, trailing
    text or an odd date-time separator make it unparseable, so such a message never shares a key
    with the clean one). A timestamp without an offset is read as UTC (the API documents offsets;
    a missing one is reported rather than guessed silently). Digits beyond the microsecond are
    dropped from the datetime; the key keeps them (``instant_json``).
    """
    parsed, problem, _ = parse_timestamp_fraction(raw)
    return parsed, problem


def parse_timestamp_fraction(raw: str) -> tuple[dt.datetime | None, str | None, str | None]:
    """``parse_timestamp``'s result and the fraction digits as sent (None: no fraction, or unparsed)."""
    match = _TIMESTAMP_RE.fullmatch(raw)
    if match is None:
        return None, f"timestamp {short(raw)} is not ISO-8601; received_at left NULL", None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None, f"timestamp {short(raw)} is not ISO-8601; received_at left NULL", None
    fraction = match.group(1) or match.group(2)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_UTC), "timestamp has no UTC offset; read as UTC", fraction
    try:
        return parsed.astimezone(_UTC), None, fraction
    except OverflowError:
        return None, f"timestamp {short(raw)} is out of range; received_at left NULL", None


def instant_json(parsed: dt.datetime, fraction: str | None) -> str:
    """The key's spelling of a parsed instant: UTC ``isoformat()``, with every significant
    fraction digit as sent when there are more than six (the datetime keeps six). Six or fewer
    give exactly ``isoformat()``, the spelling keys had before sub-microsecond digits counted."""
    iso = parsed.isoformat()
    if fraction is not None and len(fraction) > _MICRO_DIGITS:
        digits = fraction.rstrip("0")
        if len(digits) > _MICRO_DIGITS:
            # isoformat() of a UTC datetime: "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00".
            iso = f"{iso[:19]}.{digits}+00:00"
    return f'"{iso}"'


def message_key(account: str, message: models.SMSMessage, occurrence: int) -> str:
    """The identity of one message: sha256 hex of its canonical JSON and occurrence number."""
    basis, _ = key_basis(account, basis_prefix(account), message)
    return key_hash(basis, occurrence)


# The canonical forms below are built from pieces, but they are exactly the text of
#   json.dumps([tag, account, devices, timestamp, message], ensure_ascii=True, separators=(",", ":"))
# without its closing "]" (the hash appends ",occurrence]"): stored keys depend on every byte.
def basis_prefix(account: str) -> str:
    return f'["{_WELL_FORMED_TAG}",{encode_str(account)},'


def key_basis(
    account: str, prefix: str, message: models.SMSMessage
) -> tuple[str, tuple[dt.datetime | None, str | None] | None]:
    """Canonical JSON without its closing bracket, and the parsed timestamp, if any."""
    parsed_at: tuple[dt.datetime | None, str | None] | None = None
    if message.problems:
        canonical = dumps(message.raw, sort_keys=True)
        basis = json.dumps([_RAW_TAG, account, canonical], ensure_ascii=True, separators=(",", ":"))
        return basis[:-1], parsed_at
    timestamp_json = "null"
    if message.timestamp is not None:
        parsed, problem, fraction = parse_timestamp_fraction(message.timestamp)
        parsed_at = (parsed, problem)
        timestamp_json = _json_value(message.timestamp) if parsed is None else instant_json(parsed, fraction)
    devices, extras = _identity_members(message)
    basis = f"{prefix}{devices},{timestamp_json},{_json_value(message.message)}"
    # Only a message with members beyond the model's gets the extra element: every other key is
    # the one earlier versions stored.
    return basis if extras is None else f"{basis},{extras}", parsed_at


def _identity_members(message: models.SMSMessage) -> tuple[str, str | None]:
    """The key's device list, and the message's other members as canonical JSON (None: none).

    Identity covers every member a message carries (docs/schema.md, "Message identity"): a
    member the model does not know (a ``messageId`` ThingSpace might add) tells two messages
    apart. Not counted: members whose value is null (they say nothing), and ``accountName``
    (the account is in the key already; a pushed message names it, the polled copy does not).
    A device's own extra members go with that device: ``[kind, id, {...}]``.
    """
    raw = message.raw
    model_devices = message.device_ids
    device_extras = [""] * len(model_devices)
    extras = None
    if type(raw) is dict:
        found = {
            k: v
            for k, v in raw.items()
            if k not in _CORE_MEMBERS and k not in _NOT_IDENTITY and v is not None
        }
        if found:
            extras = dumps(found, sort_keys=True)
        items = raw.get("deviceIds")
        if type(items) is list and len(items) == len(device_extras):
            for i, item in enumerate(items):
                if type(item) is dict and len(item) > len(DEVICE_KEYS):
                    more = {k: v for k, v in item.items() if k not in DEVICE_KEYS and v is not None}
                    if more:
                        device_extras[i] = dumps(more, sort_keys=True)
    if not any(device_extras):
        return devices_json(sorted([(d.kind.lower(), d.id) for d in model_devices])), extras
    entries = sorted([(d.kind.lower(), d.id, device_extras[i]) for i, d in enumerate(model_devices)])
    return "[" + ",".join([_device_entry_json(*entry) for entry in entries]) + "]", extras


def _device_entry_json(kind: Any, ident: Any, extras: str) -> str:
    pair = json.dumps([kind, ident], ensure_ascii=True, separators=(",", ":"))
    return pair if not extras else f"{pair[:-1]},{extras}]"


def devices_json(devices: Sequence[tuple[Any, Any]]) -> str:
    try:
        return "[" + ",".join([f"[{encode_str(k)},{encode_str(i)}]" for k, i in devices]) + "]"
    except TypeError:
        # Only a hand-built DeviceId holds non-strings; json.dumps spells those.
        return json.dumps([list(d) for d in devices], ensure_ascii=True, separators=(",", ":"))


def _json_value(value: Any) -> str:
    if isinstance(value, str):
        return encode_str(value)
    return dumps(value)


def key_hash(basis: str, occurrence: int) -> str:
    # Appending the occurrence inside the JSON array keeps the hashed text canonical JSON.
    return hashlib.sha256(f"{basis},{occurrence}]".encode("ascii")).hexdigest()


def short(value: str, limit: int = 40) -> str:
    shown = clean_text(value)[0]
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    return repr(shown)
