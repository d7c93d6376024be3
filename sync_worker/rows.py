"""Message identity and the rows the store writes.

The API gives messages no id, so ``message_key`` derives one from what the
message says (see docs/schema.md, "Message identity"). Row building never
raises on bad data: whatever arrived becomes a row that keeps the exact
original in ``raw_json`` and says what was wrong in ``problems``.

Nothing here recurses on message content: a value the decoder accepted may be
nested almost a thousand levels deep, and the C encoder and any recursive walk
would hit the interpreter's recursion limit on it. Values nested deeper than
``MAX_NESTING`` are serialised by an iterative encoder (same text as
``json.dumps``), kept in ``raw_json`` only (the jsonb copies are left NULL) and
flagged in ``problems``; shallower ones take the usual C-implemented path, so
message keys of ordinary messages never change.

This is the hot path of the write side (the bar is ~1M rows/min per core), so
it favours a few C-implemented calls per row over generality.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import json.encoder
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sync_worker import models

REPLACEMENT: Final = "\ufffd"
# NUL is refused by Postgres text and jsonb; lone surrogates cannot be encoded as UTF-8.
_BAD_CHARS_RE: Final = re.compile("[\x00\ud800-\udfff]")
# json.dumps(ensure_ascii=True) writes NUL and every surrogate as one of these escapes.
_SUSPECT_ESCAPE_RE: Final = re.compile(r"\\u(0000|d[89a-f])", re.IGNORECASE)
_UTC: Final = dt.UTC
_WELL_FORMED_TAG: Final = "sms-v1"
_RAW_TAG: Final = "sms-raw-v1"
PROBLEM_SEPARATOR: Final = "\x1f"
# The C string encoder json.dumps(ensure_ascii=True) itself uses: the same escapes, without
# building a JSONEncoder per call (that setup cost more than encoding a whole message).
_encode_str: Final = json.encoder.encode_basestring_ascii
_WIRE_KEYS: Final = ("deviceIds", "message", "timestamp")
# Deeper values are encoded iteratively and not offered to jsonb; far below the recursion limit
# so the C encoder is safe however deep the calling stack is.
MAX_NESTING: Final = 100
_DEVICE_KEYS: Final = ("id", "kind")
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
# account (already in the key, and named inside pushed messages only). See _extra_members.
_CORE_MEMBERS: Final = frozenset({"deviceIds", "message", "timestamp"})
_NOT_IDENTITY: Final = frozenset({"accountName"})


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One ``sms_message`` row; devices after the first become ``sms_message_device`` rows.

    ``devices`` holds each distinct (kind, id) once, in the order first listed (the key and
    ``raw_json`` keep the list as sent). ``raw_json`` is the original as received; ``raw_kept`` is
    what the store keeps of it: None
    when the database rebuilds it byte for byte from the row's fields
    (``sms_history_rebuild_raw``, migration 0006), else ``raw_json`` itself.
    """

    account_name: str
    message_key: str
    occurrence: int
    device_kind: str | None
    device_id: str | None
    devices: tuple[tuple[str, str], ...]
    message: str | None
    received_at: dt.datetime | None
    timestamp_raw: str | None
    raw_json: str
    raw_kept: str | None
    raw_is_jsonb: bool
    problems: tuple[str, ...]

    @property
    def malformed(self) -> bool:
        return bool(self.problems)


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
    return _dumps(raw)


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


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    """``json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=...)``, any depth."""
    if nesting_depth(value) <= MAX_NESTING:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys)
    return _dumps_iterative(value, sort_keys=sort_keys)


def _dumps_iterative(value: Any, *, sort_keys: bool) -> str:
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
                stack.append((f"{prefix}{_encode_str(str(key))}:",))
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
    dropped from the datetime; the key keeps them (``_instant_json``).
    """
    parsed, problem, _ = _parse_timestamp(raw)
    return parsed, problem


def _parse_timestamp(raw: str) -> tuple[dt.datetime | None, str | None, str | None]:
    """``parse_timestamp``'s result and the fraction digits as sent (None: no fraction, or unparsed)."""
    match = _TIMESTAMP_RE.fullmatch(raw)
    if match is None:
        return None, f"timestamp {_short(raw)} is not ISO-8601; received_at left NULL", None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None, f"timestamp {_short(raw)} is not ISO-8601; received_at left NULL", None
    fraction = match.group(1) or match.group(2)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_UTC), "timestamp has no UTC offset; read as UTC", fraction
    try:
        return parsed.astimezone(_UTC), None, fraction
    except OverflowError:
        return None, f"timestamp {_short(raw)} is out of range; received_at left NULL", None


def _instant_json(parsed: dt.datetime, fraction: str | None) -> str:
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
    basis, _ = _key_basis(account, _basis_prefix(account), message)
    return _hash(basis, occurrence)


def build_rows(account: str, messages: Iterable[models.SMSMessage]) -> list[Row]:
    """Rows for one block, numbering identical messages so each becomes its own row."""
    prefix = _basis_prefix(account)
    seen: dict[str, int] = {}
    return [_any_row(account, prefix, message, seen) for message in messages]


def _any_row(account: str, prefix: str, message: models.SMSMessage, seen: dict[str, int]) -> Row:
    row = None if message.problems else _plain_row(account, prefix, message, seen)
    if row is None:
        basis, parsed_at = _key_basis(account, prefix, message)
        occurrence = seen.get(basis, 0)
        seen[basis] = occurrence + 1
        row = _row(account, message, _hash(basis, occurrence), occurrence, parsed_at)
    return row


# One row of a Block before the columns are split: the write statement's per-row arrays, in order.
_Columns = tuple[
    bytes, int, "str | None", "str | None", int, "str | None", "dt.datetime | None", "str | None",
    "str | None", bool, "str | None",
]  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    """One block's rows as the columns the write statement takes (``store.commit_block``).

    Row ``i`` of the block is element ``i`` of every per-row column; ``problems`` holds a row's
    problems joined by ``PROBLEM_SEPARATOR`` (None: well formed). Devices after a row's first are
    the ``dev_*`` columns, tied to their row by ``dev_message_key``. Equal, column for column, to
    ``from_rows(build_rows(...))``.
    """

    message_key: Sequence[bytes]
    occurrence: Sequence[int]
    device_kind: Sequence[str | None]
    device_id: Sequence[str | None]
    device_count: Sequence[int]
    message: Sequence[str | None]
    received_at: Sequence[dt.datetime | None]
    timestamp_raw: Sequence[str | None]
    raw_kept: Sequence[str | None]
    raw_is_jsonb: Sequence[bool]
    problems: Sequence[str | None]
    dev_message_key: Sequence[bytes] = ()
    dev_position: Sequence[int] = ()
    dev_kind: Sequence[str] = ()
    dev_id: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.message_key)

    @property
    def malformed(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """(index in the block, problems) of every row that did not fit the model."""
        sep = PROBLEM_SEPARATOR
        return tuple((i, tuple(p.split(sep))) for i, p in enumerate(self.problems) if p is not None)

    @classmethod
    def from_rows(cls, built: Sequence[Row]) -> Block:
        return _block([_columns_of(r) for r in built], built)


def build_block(account: str, messages: Sequence[models.SMSMessage]) -> Block:
    """``Block.from_rows(build_rows(account, messages))``, without a ``Row`` per common message.

    The write path's one pass over a block: a message of the common shape (one device, fields
    in wire order, clean text) goes straight to its columns; any other takes ``build_rows``'s
    own path, with the same occurrence numbering, so keys and every column are the same. A
    ``models.Messages`` (the client's pages) is read from its decoded records: a common one
    needs no ``SMSMessage`` at all, any other is made one here.
    """
    prefix = _basis_prefix(account)
    seen: dict[str, int] = {}
    columns: list[_Columns] = []
    others: list[Row] = []
    if isinstance(messages, models.Messages):
        for record in messages.records:
            found = _record_columns(prefix, record, seen)
            if found is None:
                found = _other_columns(account, prefix, models.SMSMessage.from_wire(record), seen, others)
            columns.append(found)
    else:
        for message in messages:
            found = None if message.problems else _common_columns(prefix, message, seen)
            if found is None:
                found = _other_columns(account, prefix, message, seen, others)
            columns.append(found)
    return _block(columns, others)


def _other_columns(
    account: str, prefix: str, message: models.SMSMessage, seen: dict[str, int], others: list[Row]
) -> _Columns:
    row = _any_row(account, prefix, message, seen)
    if len(row.devices) > 1:
        others.append(row)
    return _columns_of(row)


def _block(columns: list[_Columns], rows_with_devices: Iterable[Row]) -> Block:
    dev_key: list[bytes] = []
    dev_position: list[int] = []
    dev_kind: list[str] = []
    dev_id: list[str] = []
    for r in rows_with_devices:
        # The first device lives in the message row; only the rare others need rows of their own.
        key = bytes.fromhex(r.message_key)
        for position in range(1, len(r.devices)):
            kind, ident = r.devices[position]
            dev_key.append(key)
            dev_position.append(position)
            dev_kind.append(kind)
            dev_id.append(ident)
    if not columns:
        return Block((), (), (), (), (), (), (), (), (), (), ())
    c = list(zip(*columns, strict=True))
    return Block(
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10],
        dev_key, dev_position, dev_kind, dev_id,
    )  # fmt: skip


def _columns_of(r: Row) -> _Columns:
    return (
        bytes.fromhex(r.message_key),
        r.occurrence,
        r.device_kind,
        r.device_id,
        len(r.devices),
        r.message,
        r.received_at,
        r.timestamp_raw,
        r.raw_kept,
        r.raw_is_jsonb,
        PROBLEM_SEPARATOR.join(r.problems) if r.problems else None,
    )


def _common_columns(prefix: str, message: models.SMSMessage, seen: dict[str, int]) -> _Columns | None:
    """``_plain_row``'s result as columns for its most common case: one device, fields in wire
    order; None for anything else (then ``_plain_row`` or ``_row`` decide)."""
    raw = message.raw
    devices = message.device_ids
    if type(raw) is not dict or len(devices) != 1:
        return None
    # The model must hold the very values of raw (a hand-built message may not).
    items = raw.get("deviceIds")
    if raw.get("message") is not message.message or raw.get("timestamp") is not message.timestamp:
        return None
    if type(items) is not list or len(items) != 1 or type(items[0]) is not dict:
        return None
    kind = items[0].get("kind")
    device = devices[0]
    if items[0].get("id") is not device.id or type(kind) is not str or device.kind != kind.lower():
        return None
    return _record_columns(prefix, raw, seen)


def _record_columns(prefix: str, raw: Any, seen: dict[str, int]) -> _Columns | None:
    """The columns of a decoded message of the common shape, or None for any other.

    Common: an object with exactly ``deviceIds``, ``message``, ``timestamp`` in wire order,
    one device object of exactly ``id`` and ``kind`` (a known kind, any case), string values,
    clean text. ``SMSMessage.from_wire`` finds no problem in such a message and keeps these
    very strings, so the columns equal ``_plain_row``'s.
    """
    if type(raw) is not dict or tuple(raw) != _WIRE_KEYS:
        return None
    items = raw["deviceIds"]
    text = raw["message"]
    stamp = raw["timestamp"]
    if type(items) is not list or len(items) != 1 or type(text) is not str or type(stamp) is not str:
        return None
    item = items[0]
    if type(item) is not dict or tuple(item) != _DEVICE_KEYS:
        return None
    ident = item["id"]
    kind = item["kind"]
    if type(ident) is not str or type(kind) is not str:
        return None
    lower = kind.lower()
    if lower not in models.DEVICE_KINDS:
        return None
    probe = f"{text}{stamp}{ident}{kind}"
    if "\x00" in probe or not (probe.isascii() or _utf8_encodable(probe)):
        return None
    received_at, problem, fraction = _parse_timestamp(stamp)
    text_json = _encode_str(text)
    ident_json = _encode_str(ident)
    lower_json = _encode_str(lower)
    stamp_json = _instant_json(received_at, fraction) if received_at is not None else _encode_str(stamp)
    basis = f"{prefix}[[{lower_json},{ident_json}]],{stamp_json},{text_json}"
    occurrence = seen.get(basis, 0)
    seen[basis] = occurrence + 1
    # The database rebuilds raw with the stored (lowered) kind: an upper-case original is kept.
    kept = None if lower == kind else rebuild_raw(ident, kind, text, stamp)
    return (
        hashlib.sha256(f"{basis},{occurrence}]".encode("ascii")).digest(),
        occurrence,
        lower,
        ident,
        1,
        text,
        received_at,
        stamp,
        kept,
        True,
        None if problem is None else problem.replace(PROBLEM_SEPARATOR, " "),
    )


# The canonical forms below are built from pieces, but they are exactly the text of
#   json.dumps([tag, account, devices, timestamp, message], ensure_ascii=True, separators=(",", ":"))
# without its closing "]" (the hash appends ",occurrence]"): stored keys depend on every byte.
def _basis_prefix(account: str) -> str:
    return f'["{_WELL_FORMED_TAG}",{_encode_str(account)},'


def _key_basis(
    account: str, prefix: str, message: models.SMSMessage
) -> tuple[str, tuple[dt.datetime | None, str | None] | None]:
    """Canonical JSON without its closing bracket, and the parsed timestamp, if any."""
    parsed_at: tuple[dt.datetime | None, str | None] | None = None
    if message.problems:
        canonical = _dumps(message.raw, sort_keys=True)
        basis = json.dumps([_RAW_TAG, account, canonical], ensure_ascii=True, separators=(",", ":"))
        return basis[:-1], parsed_at
    timestamp_json = "null"
    if message.timestamp is not None:
        parsed, problem, fraction = _parse_timestamp(message.timestamp)
        parsed_at = (parsed, problem)
        timestamp_json = _json_value(message.timestamp) if parsed is None else _instant_json(parsed, fraction)
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
            extras = _dumps(found, sort_keys=True)
        items = raw.get("deviceIds")
        if type(items) is list and len(items) == len(device_extras):
            for i, item in enumerate(items):
                if type(item) is dict and len(item) > len(_DEVICE_KEYS):
                    more = {k: v for k, v in item.items() if k not in _DEVICE_KEYS and v is not None}
                    if more:
                        device_extras[i] = _dumps(more, sort_keys=True)
    if not any(device_extras):
        return _devices_json(sorted([(d.kind.lower(), d.id) for d in model_devices])), extras
    entries = sorted([(d.kind.lower(), d.id, device_extras[i]) for i, d in enumerate(model_devices)])
    return "[" + ",".join([_device_entry_json(*entry) for entry in entries]) + "]", extras


def _device_entry_json(kind: Any, ident: Any, extras: str) -> str:
    pair = json.dumps([kind, ident], ensure_ascii=True, separators=(",", ":"))
    return pair if not extras else f"{pair[:-1]},{extras}]"


def _devices_json(devices: Sequence[tuple[Any, Any]]) -> str:
    try:
        return "[" + ",".join([f"[{_encode_str(k)},{_encode_str(i)}]" for k, i in devices]) + "]"
    except TypeError:
        # Only a hand-built DeviceId holds non-strings; json.dumps spells those.
        return json.dumps([list(d) for d in devices], ensure_ascii=True, separators=(",", ":"))


def _json_value(value: Any) -> str:
    if isinstance(value, str):
        return _encode_str(value)
    return _dumps(value)


def _hash(basis: str, occurrence: int) -> str:
    # Appending the occurrence inside the JSON array keeps the hashed text canonical JSON.
    return hashlib.sha256(f"{basis},{occurrence}]".encode("ascii")).hexdigest()


def _plain_row(account: str, prefix: str, message: models.SMSMessage, seen: dict[str, int]) -> Row | None:
    """The row of a common, clean message, or None when ``_row`` must look closer.

    Clean means: the raw object has the documented shape (three fields, string
    values, devices of string ``id`` and ``kind`` only, known kinds), the model
    holds those very strings, and no text needs cleaning. One probe over the
    concatenated text replaces a clean-up pass per field and the jsonb check,
    and the JSON texts are assembled from encoded strings instead of a
    json.dumps per structure. The result equals ``_row``'s, field for field.
    """
    raw = message.raw
    if type(raw) is not dict or len(raw) != 3:
        return None
    items = raw.get("deviceIds")
    text = raw.get("message")
    stamp = raw.get("timestamp")
    if type(items) is not list or type(text) is not str or type(stamp) is not str:
        return None
    model_devices = message.device_ids
    if text is not message.message or stamp is not message.timestamp or len(items) != len(model_devices):
        return None
    probe = [text, stamp]
    devices: list[tuple[str, str]] = []
    raw_parts: list[str] = []
    # Whether the database can rebuild raw from the stored (lowered) fields, as far as devices go.
    canonical_devices = len(items) == 1
    for item, device in zip(items, model_devices, strict=True):
        if type(item) is not dict or len(item) != 2:
            return None
        ident = item.get("id")
        kind = item.get("kind")
        if type(ident) is not str or type(kind) is not str:
            return None
        lower = kind.lower()
        if lower not in models.DEVICE_KINDS or device.id is not ident or device.kind != lower:
            return None
        probe.append(ident)
        probe.append(kind)
        devices.append((lower, ident))
        ident_json = _encode_str(ident)
        kind_json = _encode_str(kind)
        if tuple(item) == _DEVICE_KEYS:
            raw_parts.append(f'{{"id":{ident_json},"kind":{kind_json}}}')
            canonical_devices = canonical_devices and lower == kind
        else:
            raw_parts.append(f'{{"kind":{kind_json},"id":{ident_json}}}')
            canonical_devices = False
    # Every string of raw is in the probe (the keys are fixed ASCII), so a clean
    # probe also means raw is valid jsonb and needs no clean-up anywhere.
    joined = "".join(probe)
    if "\x00" in joined or not (joined.isascii() or _utf8_encodable(joined)):
        return None

    text_json = _encode_str(text)
    devices_raw = "[" + ",".join(raw_parts) + "]"
    wire_order = tuple(raw) == _WIRE_KEYS
    if wire_order:
        raw_json = f'{{"deviceIds":{devices_raw},"message":{text_json},"timestamp":{_encode_str(stamp)}}}'
    else:
        raw_json = json.dumps(raw, ensure_ascii=True, separators=(",", ":"))
    # The database rebuilds exactly this shape from the row's fields: one device, keys in wire
    # order, kind already lower case (the stored kind is lowered).
    rebuildable = wire_order and canonical_devices
    received_at, problem, fraction = _parse_timestamp(stamp)
    stamp_json = _instant_json(received_at, fraction) if received_at is not None else _encode_str(stamp)
    basis = f"{prefix}{_devices_json(sorted(devices))},{stamp_json},{text_json}"
    occurrence = seen.get(basis, 0)
    seen[basis] = occurrence + 1
    first = devices[0] if devices else (None, None)
    return Row(
        account_name=account,
        message_key=_hash(basis, occurrence),
        occurrence=occurrence,
        device_kind=first[0],
        device_id=first[1],
        # One entry per distinct device: a message listing a device twice is counted once for it.
        devices=tuple(dict.fromkeys(devices)),
        message=text,
        received_at=received_at,
        timestamp_raw=stamp,
        raw_json=raw_json,
        raw_kept=None if rebuildable else raw_json,
        raw_is_jsonb=True,
        problems=() if problem is None else (problem.replace(PROBLEM_SEPARATOR, " "),),
    )


def rebuild_raw(device_id: str, device_kind: str, message: str, timestamp_raw: str) -> str:
    """The original of a one-device message from its stored fields; SQL ``sms_history_rebuild_raw``."""
    return (
        f'{{"deviceIds":[{{"id":{_encode_str(device_id)},"kind":{_encode_str(device_kind)}}}],'
        f'"message":{_encode_str(message)},"timestamp":{_encode_str(timestamp_raw)}}}'
    )


def _rebuilds(raw_json: str, devices: Sequence[tuple[str, str]], text: Any, stamp: Any) -> bool:
    if len(devices) != 1 or type(text) is not str or type(stamp) is not str:
        return False
    kind, ident = devices[0]
    return rebuild_raw(ident, kind, text, stamp) == raw_json


def _utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _row(  # noqa: PLR0912  # one flat pass over a message's fields, each with its own fallback
    account: str,
    message: models.SMSMessage,
    key: str,
    occurrence: int,
    parsed_at: tuple[dt.datetime | None, str | None] | None,
) -> Row:
    problems = list(message.problems)
    raw = message.raw
    depth = nesting_depth(raw)
    if depth > MAX_NESTING:
        raw_json = _dumps_iterative(raw, sort_keys=False)
        raw_is_jsonb = False
        problems.append(
            f"message is nested more than {MAX_NESTING} levels deep; kept verbatim as text in "
            "raw_json, jsonb copies left NULL"
        )
    else:
        try:
            raw_json = json.dumps(raw, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            finite = True
        except ValueError:
            raw_json = dump_raw(raw)
            finite = False
        raw_is_jsonb = finite and (
            _SUSPECT_ESCAPE_RE.search(raw_json) is None or _value_representable(json.loads(raw_json))
        )

    if not raw_is_jsonb and depth <= MAX_NESTING:
        problems.append(
            "raw message holds NUL, a lone surrogate or a non-finite number; "
            "jsonb copy left NULL, raw_json keeps it"
        )

    text = message.message
    if text is not None:
        text, changed = clean_text(text)
        if changed:
            problems.append("message had NUL or lone surrogate characters; replaced with U+FFFD")

    timestamp_raw = message.timestamp
    received_at: dt.datetime | None = None
    if timestamp_raw is not None:
        if parsed_at is None:
            parsed_at = parse_timestamp(timestamp_raw)
        received_at, problem = parsed_at
        if problem is not None:
            problems.append(problem)
        timestamp_raw, changed = clean_text(timestamp_raw)
        if changed:
            problems.append("timestamp had NUL or lone surrogate characters; replaced with U+FFFD")

    devices: list[tuple[str, str]] = []
    for i, device in enumerate(message.device_ids):
        kind, kind_changed = clean_text(device.kind.lower())
        ident, id_changed = clean_text(device.id)
        if kind_changed or id_changed:
            problems.append(f"deviceIds[{i}] had NUL or lone surrogate characters; replaced with U+FFFD")
        if kind not in models.DEVICE_KINDS:
            problems.append(f"deviceIds[{i}].kind {_short(kind)} is not a known kind")
        devices.append((kind, ident))

    first = devices[0] if devices else (None, None)
    distinct = tuple(dict.fromkeys(devices))
    return Row(
        account_name=account,
        message_key=key,
        occurrence=occurrence,
        device_kind=first[0],
        device_id=first[1],
        devices=distinct,
        message=text,
        received_at=received_at,
        timestamp_raw=timestamp_raw,
        raw_json=raw_json,
        raw_kept=None if _rebuilds(raw_json, distinct, text, timestamp_raw) else raw_json,
        raw_is_jsonb=raw_is_jsonb,
        problems=tuple(p.replace(PROBLEM_SEPARATOR, " ") for p in problems),
    )


def _value_representable(value: Any) -> bool:
    """Whether jsonb can hold ``value`` (no NUL, lone surrogate or non-finite number), without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if clean_text(item)[1]:
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True


def _short(value: str, limit: int = 40) -> str:
    shown = clean_text(value)[0]
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    return repr(shown)
