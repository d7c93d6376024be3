"""Packed binary arrays are byte for byte what psycopg's own list dumpers send."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.numeric import Int4

from sync_worker import pgarrays


def _psycopg(values: list[Any]) -> bytes:
    """What psycopg itself sends for ``values`` as a binary parameter (no connection: UTF-8)."""
    dumper = Transformer().get_dumper(values, PyFormat.BINARY)
    return bytes(dumper.dump(values) or b"")


# No NUL: Postgres text cannot hold it, and the write path cleans it out before packing.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_instants = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)


@given(st.lists(_text, min_size=1, max_size=30))
def test_text_without_nulls_equals_psycopg(values: list[str]) -> None:
    """A text column (any Unicode, empty strings, one value or many) packs as psycopg dumps it."""
    packed = pgarrays.text(values)
    assert isinstance(packed, pgarrays.PackedText)
    assert bytes(packed) == _psycopg(values)


@given(
    st.lists(st.one_of(st.none(), _text), min_size=1, max_size=30).filter(lambda v: v.count(None) < len(v))
)
def test_text_with_nulls_equals_psycopg(values: list[str | None]) -> None:
    """NULLs in a text column are flagged in the header and sent as length -1."""
    assert bytes(pgarrays.text(values)) == _psycopg(values)


def test_a_value_holding_nul_takes_the_general_path() -> None:
    """A NUL inside a value cannot be mistaken for the separator of the one-split path."""
    values = ["a\x00b", "c"]
    assert bytes(pgarrays.text(values)) == _psycopg(values)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=30))
def test_int4_equals_psycopg(values: list[int]) -> None:
    """An integer column packs as psycopg dumps a list of Int4."""
    assert bytes(pgarrays.int4(values)) == _psycopg([Int4(v) for v in values])


@given(
    st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), min_size=1, max_size=30).filter(
        lambda v: None in v and v.count(None) < len(v)
    )
)
def test_int4_with_nulls_equals_psycopg(values: list[int | None]) -> None:
    """NULLs in an integer column are flagged in the header and sent as length -1."""
    assert bytes(pgarrays.int4(values)) == _psycopg([None if v is None else Int4(v) for v in values])


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=30))
def test_bytea_equals_psycopg(values: list[bytes | None]) -> None:
    """A bytea column (with or without NULLs) packs as psycopg dumps it."""
    if all(v is None for v in values):
        values = [b"", *values]
    assert bytes(pgarrays.bytea(values)) == _psycopg(values)


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_boolean_equals_psycopg(values: list[bool]) -> None:
    """A boolean column packs as psycopg dumps it."""
    assert bytes(pgarrays.boolean(values)) == _psycopg(values)


@given(st.lists(st.one_of(st.none(), _instants), min_size=1, max_size=30))
def test_timestamptz_equals_psycopg(values: list[dt.datetime | None]) -> None:
    """Instants from year 1 to 9999, to the microsecond, with or without NULLs, pack as psycopg dumps them."""
    if all(v is None for v in values):
        values = [dt.datetime(2024, 5, 1, tzinfo=dt.UTC), *values]
    assert bytes(pgarrays.timestamptz(values)) == _psycopg(values)


def test_empty_columns_are_empty_arrays_of_their_type() -> None:
    """An empty column is a zero-dimension array naming its element type, as psycopg sends it."""
    for packed, element_oid in (
        (pgarrays.text([]), 25),
        (pgarrays.int4([]), 23),
        (pgarrays.boolean([]), 16),
        (pgarrays.bytea([]), 17),
        (pgarrays.timestamptz([]), 1184),
    ):
        assert bytes(packed) == bytes(8) + element_oid.to_bytes(4, "big")
