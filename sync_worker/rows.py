"""The rows the store writes: a block's messages as ``Row``s and as the write statement's columns.

Row building never raises on bad data: whatever arrived becomes a row that keeps the exact
original in ``raw_json`` and says what was wrong in ``problems``. Each row's key is
``identity.message_key``'s (computed inline on the fast paths, with the same text).

Nothing here recurses on message content (see ``identity``): values nested deeper than
``identity.MAX_NESTING`` are kept in ``raw_json`` only (the jsonb copies are left NULL) and
flagged in ``problems``.

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

from sync_worker import identity, models

# json.dumps(ensure_ascii=True) writes NUL and every surrogate as one of these escapes.
_SUSPECT_ESCAPE_RE: Final = re.compile(r"\\u(0000|d[89a-f])", re.IGNORECASE)
PROBLEM_SEPARATOR: Final = "\x1f"
# The stdlib's C string encoder, as ``identity`` uses it (the same escapes).
_encode_str: Final = json.encoder.encode_basestring_ascii
_WIRE_KEYS: Final = ("deviceIds", "message", "timestamp")
# Devices a message row holds (the first, device2_*, device3_*; migration 0018); the others get
# sms_message_device rows.
ROW_DEVICES: Final = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One ``sms_message`` row; its second and third devices are columns of it (``device2_*``,
    ``device3_*``), a 4th and later become ``sms_message_device`` rows.

    ``devices`` holds each distinct (kind, id) once, in the order first listed (the key and
    ``raw_json`` keep the list as sent). ``raw_json`` is the original as received; ``raw_kept`` is
    what the store keeps of it: None when the database rebuilds it byte for byte from the row's
    fields and ``raw_devices`` (``sms_history_rebuild_raw``, migrations 0006 and 0017), else
    ``raw_json`` itself. ``raw_devices`` is the original's text of the deviceIds items after the
    first (from the comma that precedes the second), for a rebuilt original that lists several;
    None otherwise (the stored column is None also where ``devices_rebuilt`` gives the same text).
    ``message_json`` is the text's JSON string literal as the original spells it,
    for a rebuilt original whose text is not plain printable ASCII (the database then reads it
    instead of escaping the text per read); None otherwise.
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
    raw_devices: str | None = None
    message_json: str | None = None

    @property
    def malformed(self) -> bool:
        return bool(self.problems)


def build_rows(account: str, messages: Iterable[models.SMSMessage]) -> list[Row]:
    """Rows for one block, numbering identical messages so each becomes its own row."""
    prefix = identity.basis_prefix(account)
    seen: dict[str, int] = {}
    return [_any_row(account, prefix, message, seen) for message in messages]


def _any_row(account: str, prefix: str, message: models.SMSMessage, seen: dict[str, int]) -> Row:
    row = None if message.problems else _plain_row(account, prefix, message, seen)
    if row is None:
        basis, parsed_at = identity.key_basis(account, prefix, message)
        occurrence = seen.get(basis, 0)
        seen[basis] = occurrence + 1
        row = _row(account, message, identity.key_hash(basis, occurrence), occurrence, parsed_at)
    return row


# One row of a Block before the columns are split: the write statement's per-row arrays, in order.
_Columns = tuple[
    bytes, int, "str | None", "str | None", int, "str | None", "dt.datetime | None", "str | None",
    "str | None", bool, "str | None", "str | None", "str | None",
    "str | None", "str | None", "str | None", "str | None",
]  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    """One block's rows as the columns the write statement takes (``store.commit_block``).

    Row ``i`` of the block is element ``i`` of every per-row column; ``problems`` holds a row's
    problems joined by ``PROBLEM_SEPARATOR`` (None: well formed). Devices after a row's first are
    ``raw_devices`` is None where the rebuild writes the items after the first from ``device2_*`` and
    ``device3_*`` (``devices_rebuilt``); the 4th and later devices are the ``dev_*`` columns, tied to
    their row by ``dev_message_key``. Equal, column for column, to
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
    raw_devices: Sequence[str | None]
    message_json: Sequence[str | None]
    device2_kind: Sequence[str | None]
    device2_id: Sequence[str | None]
    device3_kind: Sequence[str | None]
    device3_id: Sequence[str | None]
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
    prefix = identity.basis_prefix(account)
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
        # The first three devices live in the message row; only a 4th and later need rows of their own.
        key = bytes.fromhex(r.message_key)
        for position in range(ROW_DEVICES, len(r.devices)):
            kind, ident = r.devices[position]
            dev_key.append(key)
            dev_position.append(position)
            dev_kind.append(kind)
            dev_id.append(ident)
    if not columns:
        return Block((), (), (), (), (), (), (), (), (), (), (), (), (), (), (), (), ())
    c = list(zip(*columns, strict=True))
    return Block(
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14],
        c[15], c[16], dev_key, dev_position, dev_kind, dev_id,
    )  # fmt: skip


def _columns_of(r: Row) -> _Columns:
    second = r.devices[1] if len(r.devices) > 1 else (None, None)
    third = r.devices[ROW_DEVICES - 1] if len(r.devices) >= ROW_DEVICES else (None, None)
    raw_devices = r.raw_devices
    if raw_devices is not None and raw_devices == devices_rebuilt(r.devices):
        raw_devices = None
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
        raw_devices,
        r.message_json,
        second[0],
        second[1],
        third[0],
        third[1],
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
    if type(item) is not dict or tuple(item) != identity.DEVICE_KEYS:
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
    received_at, problem, fraction = identity.parse_timestamp_fraction(stamp)
    text_json = _encode_str(text)
    ident_json = _encode_str(ident)
    lower_json = _encode_str(lower)
    stamp_json = (
        identity.instant_json(received_at, fraction) if received_at is not None else _encode_str(stamp)
    )
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
        None,
        None if kept is not None else _escaped(text_json, text),
        None,
        None,
        None,
        None,
    )


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
    # Whether the database can rebuild raw from the stored (lowered) fields, as far as the first
    # device goes (the others are kept as sent in raw_devices).
    canonical_devices = len(items) >= 1
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
        if tuple(item) == identity.DEVICE_KEYS:
            raw_parts.append(f'{{"id":{ident_json},"kind":{kind_json}}}')
            canonical_devices = canonical_devices and (lower == kind or len(raw_parts) > 1)
        else:
            raw_parts.append(f'{{"kind":{kind_json},"id":{ident_json}}}')
            canonical_devices = canonical_devices and len(raw_parts) > 1
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
    # The database rebuilds exactly this shape from the row's fields: keys in wire order, the first
    # device's keys too and its kind already lower case (the stored kind is lowered); the devices
    # after the first are raw_devices, their text as sent.
    rebuildable = wire_order and canonical_devices
    raw_devices = "," + ",".join(raw_parts[1:]) if rebuildable and len(raw_parts) > 1 else None
    received_at, problem, fraction = identity.parse_timestamp_fraction(stamp)
    stamp_json = (
        identity.instant_json(received_at, fraction) if received_at is not None else _encode_str(stamp)
    )
    basis = f"{prefix}{identity.devices_json(sorted(devices))},{stamp_json},{text_json}"
    occurrence = seen.get(basis, 0)
    seen[basis] = occurrence + 1
    first = devices[0] if devices else (None, None)
    return Row(
        account_name=account,
        message_key=identity.key_hash(basis, occurrence),
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
        raw_devices=raw_devices,
        message_json=_escaped(text_json, text) if rebuildable else None,
    )


def rebuild_raw(
    device_id: str, device_kind: str, message: str, timestamp_raw: str, raw_devices: str | None = None
) -> str:
    """The original of a message from its stored fields; SQL ``sms_history_rebuild_raw``.

    ``raw_devices`` (None: one device) is the text of the deviceIds items after the first, as
    sent, from the comma before the second. (The stored ``message_json``, when there is one, is
    this function's spelling of ``message``: the result is the same.)
    """
    return (
        f'{{"deviceIds":[{{"id":{_encode_str(device_id)},"kind":{_encode_str(device_kind)}}}'
        f'{raw_devices or ""}],"message":{_encode_str(message)},"timestamp":{_encode_str(timestamp_raw)}}}'
    )


def devices_rebuilt(devices: Sequence[tuple[str, str]]) -> str:
    """What the database's rebuild writes after the first device when ``raw_devices`` is NULL: the
    second and third of ``devices`` (kind, id) from their columns, in the decoder's spelling."""
    return "".join(
        f',{{"id":{_encode_str(ident)},"kind":{_encode_str(kind)}}}' for kind, ident in devices[1:ROW_DEVICES]
    )


def _escaped(text_json: str, text: str) -> str | None:
    """``text_json`` (the encoding of ``text``) when it escapes something, None for plain printable
    ASCII: escaping only ever lengthens, so equal lengths mean the literal is the text in quotes."""
    return None if len(text_json) == len(text) + 2 else text_json


def _rebuilt_devices(raw_json: str, devices: Sequence[tuple[str, str]], text: Any, stamp: Any) -> str | None:
    """What ``raw_devices`` must hold for the rebuild to give back ``raw_json`` exactly: "" for one
    device, the items after the first as sent for several; None when no value rebuilds it."""
    if not devices or type(text) is not str or type(stamp) is not str:
        return None
    kind, ident = devices[0]
    head = f'{{"deviceIds":[{{"id":{_encode_str(ident)},"kind":{_encode_str(kind)}}}'
    tail = f'],"message":{_encode_str(text)},"timestamp":{_encode_str(stamp)}}}'
    if len(raw_json) < len(head) + len(tail) or not raw_json.startswith(head) or not raw_json.endswith(tail):
        return None
    rest = raw_json[len(head) : len(raw_json) - len(tail)]
    # Whatever lies between is raw_json's own text, so head + rest + tail is raw_json: the rebuild
    # is exact by construction. A rest must begin with the comma before the second item.
    if rest and not rest.startswith(","):
        return None
    return rest


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
    depth = identity.nesting_depth(raw)
    if depth > identity.MAX_NESTING:
        raw_json = identity.dumps_iterative(raw, sort_keys=False)
        raw_is_jsonb = False
        problems.append(
            f"message is nested more than {identity.MAX_NESTING} levels deep; kept verbatim as text in "
            "raw_json, jsonb copies left NULL"
        )
    else:
        try:
            raw_json = json.dumps(raw, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            finite = True
        except ValueError:
            raw_json = identity.dump_raw(raw)
            finite = False
        raw_is_jsonb = finite and (
            _SUSPECT_ESCAPE_RE.search(raw_json) is None or _value_representable(json.loads(raw_json))
        )

    if not raw_is_jsonb and depth <= identity.MAX_NESTING:
        problems.append(
            "raw message holds NUL, a lone surrogate or a non-finite number; "
            "jsonb copy left NULL, raw_json keeps it"
        )

    text = message.message
    if text is not None:
        text, changed = identity.clean_text(text)
        if changed:
            problems.append("message had NUL or lone surrogate characters; replaced with U+FFFD")

    timestamp_raw = message.timestamp
    received_at: dt.datetime | None = None
    if timestamp_raw is not None:
        if parsed_at is None:
            parsed_at = identity.parse_timestamp(timestamp_raw)
        received_at, problem = parsed_at
        if problem is not None:
            problems.append(problem)
        timestamp_raw, changed = identity.clean_text(timestamp_raw)
        if changed:
            problems.append("timestamp had NUL or lone surrogate characters; replaced with U+FFFD")

    devices: list[tuple[str, str]] = []
    for i, device in enumerate(message.device_ids):
        kind, kind_changed = identity.clean_text(device.kind.lower())
        ident, id_changed = identity.clean_text(device.id)
        if kind_changed or id_changed:
            problems.append(f"deviceIds[{i}] had NUL or lone surrogate characters; replaced with U+FFFD")
        if kind not in models.DEVICE_KINDS:
            problems.append(f"deviceIds[{i}].kind {identity.short(kind)} is not a known kind")
        devices.append((kind, ident))

    first = devices[0] if devices else (None, None)
    distinct = tuple(dict.fromkeys(devices))
    rest = _rebuilt_devices(raw_json, distinct, text, timestamp_raw)
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
        raw_kept=None if rest is not None else raw_json,
        raw_is_jsonb=raw_is_jsonb,
        problems=tuple(p.replace(PROBLEM_SEPARATOR, " ") for p in problems),
        raw_devices=rest or None,
        message_json=_escaped(_encode_str(text), text) if rest is not None and type(text) is str else None,
    )


def _value_representable(value: Any) -> bool:
    """Whether jsonb can hold ``value`` (no NUL, lone surrogate or non-finite number), without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if identity.clean_text(item)[1]:
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True
