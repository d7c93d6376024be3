"""One-dimensional Postgres arrays packed straight into their binary wire format.

The write path sends a block as a dozen parallel arrays (``INSERT ... SELECT FROM
unnest(...)``). psycopg dumps a Python list element by element in Python, which
cost more client CPU per block than the rest of the write; here each column is
packed with a few C-level calls (``map``/``zip``/``bytes.join``) into the exact
bytes ``array_recv`` reads: a header (dimensions, null flag, element type),
then per element its length (-1 for NULL) and its binary value.

``register(adapters)`` teaches a psycopg connection or cursor to send the
``Packed*`` values as binary parameters of their array type.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import struct
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from psycopg import adapt, pq

_HEADER: Final = struct.Struct(">iiIii")  # ndim, has-null flag, element oid, length, lower bound
_EMPTY: Final = struct.Struct(">iiI")  # ndim 0: no dimension follows
_LENGTH: Final = struct.Struct(">i").pack
_INT4: Final = _LENGTH
_NULL: Final = _LENGTH(-1)
_LEN8: Final = _LENGTH(8)
_TRUE: Final = _LENGTH(1) + b"\x01"
_FALSE: Final = _LENGTH(1) + b"\x00"
_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)

TEXT_OID: Final = 25
INT4_OID: Final = 23
BOOL_OID: Final = 16
BYTEA_OID: Final = 17
TIMESTAMPTZ_OID: Final = 1184


class Packed(bytes):
    """A binary array parameter; the subclass says its Postgres type."""

    array_oid: ClassVar[int]


class PackedText(Packed):
    array_oid = 1009


class PackedInt4(Packed):
    array_oid = 1007


class PackedBool(Packed):
    array_oid = 1000


class PackedBytea(Packed):
    array_oid = 1001


class PackedTimestamptz(Packed):
    array_oid = 1185


def _head(element_oid: int, count: int, has_null: bool) -> bytes:
    if count == 0:
        return _EMPTY.pack(0, 0, element_oid)
    return _HEADER.pack(1, 1 if has_null else 0, element_oid, count, 1)


def _framed(items: Sequence[bytes | None]) -> tuple[bytes, bool]:
    """Each item with its length in front (NULL for None), joined; and whether any was NULL."""
    if None not in items:
        lengths = map(_LENGTH, map(len, items))  # type: ignore[arg-type]
        return b"".join(itertools.chain.from_iterable(zip(lengths, items, strict=True))), False  # type: ignore[arg-type]
    parts: list[bytes] = []
    for item in items:
        if item is None:
            parts.append(_NULL)
        else:
            parts.append(_LENGTH(len(item)))
            parts.append(item)
    return b"".join(parts), True


def text(values: Sequence[str | None], encoding: str = "utf-8") -> PackedText:
    """``text[]``, each string encoded as the connection's client encoding says."""
    count = len(values)
    if count and None not in values:
        # One encode and one split for the whole column; Postgres text never holds NUL, so
        # NUL can separate the values (a value holding one takes the general path below).
        joined = "\x00".join(values)  # type: ignore[arg-type]
        if joined.count("\x00") == count - 1:
            encoded = joined.encode(encoding).split(b"\x00")
            lengths = map(_LENGTH, map(len, encoded))
            body = b"".join(itertools.chain.from_iterable(zip(lengths, encoded, strict=True)))
            return PackedText(_head(TEXT_OID, count, False) + body)
    items = [None if v is None else v.encode(encoding) for v in values]
    body, has_null = _framed(items)
    return PackedText(_head(TEXT_OID, count, has_null) + body)


def bytea(values: Sequence[bytes | None]) -> PackedBytea:
    body, has_null = _framed(values)
    return PackedBytea(_head(BYTEA_OID, len(values), has_null) + body)


def int4(values: Sequence[int | None]) -> PackedInt4:
    """``integer[]`` (None: NULL); a value outside int4 raises ``struct.error``."""
    count = len(values)
    if None not in values:
        body = struct.pack(f">{count * 2}i", *itertools.chain.from_iterable(zip(itertools.repeat(4), values)))
        return PackedInt4(_head(INT4_OID, count, False) + body)
    framed, _ = _framed([None if v is None else _INT4(v) for v in values])
    return PackedInt4(_head(INT4_OID, count, True) + framed)


def boolean(values: Sequence[bool]) -> PackedBool:
    return PackedBool(
        _head(BOOL_OID, len(values), False) + b"".join([_TRUE if v else _FALSE for v in values])
    )


def timestamptz(values: Sequence[dt.datetime | None]) -> PackedTimestamptz:
    """``timestamptz[]`` of aware datetimes: microseconds since 2000-01-01 UTC."""
    count = len(values)
    if None not in values:
        since = map(operator.sub, values, itertools.repeat(_PG_EPOCH))
        micros = map(operator.floordiv, since, itertools.repeat(_MICROSECOND))
        body = struct.pack(
            ">" + "iq" * count, *itertools.chain.from_iterable(zip(itertools.repeat(8), micros))
        )
        return PackedTimestamptz(_head(TIMESTAMPTZ_OID, count, False) + body)
    parts = [
        _NULL if v is None else _LEN8 + struct.pack(">q", (v - _PG_EPOCH) // _MICROSECOND) for v in values
    ]
    return PackedTimestamptz(_head(TIMESTAMPTZ_OID, count, True) + b"".join(parts))


class _PackedDumper(adapt.Dumper):
    format = pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj  # type: ignore[no-any-return]  # already the wire bytes


_DUMPERS: Final[dict[type[Packed], type[_PackedDumper]]] = {
    cls: type(f"{cls.__name__}Dumper", (_PackedDumper,), {"oid": cls.array_oid})
    for cls in (PackedText, PackedInt4, PackedBool, PackedBytea, PackedTimestamptz)
}


def register(adapters: adapt.AdaptersMap) -> None:
    """Let ``adapters`` (a connection's or a cursor's) send ``Packed*`` values as binary arrays."""
    for cls, dumper in _DUMPERS.items():
        adapters.register_dumper(cls, dumper)
