"""Named SQL blocks: parsing and lookup."""

from __future__ import annotations

import pytest

from sync_worker import errors, queries


def test_parse_splits_named_blocks() -> None:
    """Each '-- name:' line starts a block that runs to the next one, comments included."""
    text = "-- header\n-- name: one\nSELECT 1;\n\n-- name: two\n-- why\nSELECT 2;\n"
    assert queries.parse(text) == {"one": "SELECT 1;", "two": "-- why\nSELECT 2;"}


def test_parse_rejects_duplicates_and_empty_blocks() -> None:
    """A name used twice or a block with no SQL is an error naming the query."""
    with pytest.raises(errors.SchemaError, match="'a' is defined twice"):
        queries.parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(errors.SchemaError, match=r"'b'.*empty"):
        queries.parse("-- name: b\n-- only a comment\n-- name: c\nSELECT 1;\n")


def test_shipped_queries_load_and_cover_the_store() -> None:
    """Every query the store and migrations ask for exists in sql/queries."""
    loaded = queries.load()
    for name in (
        "commit_block",
        "get_cursor",
        "start_run",
        "finish_run",
        "clear_cursor",
        "try_account_lock",
        "guard_reserve",
        "guard_failed",
        "guard_succeeded",
        "account_status",
        "lock",
        "applied",
        "record",
    ):
        assert name in loaded
        assert queries.get(name) == loaded[name]
    assert queries.load() is loaded  # parsed once


def test_unknown_query_is_an_error() -> None:
    """Asking for a query that does not exist raises SchemaError naming it."""
    with pytest.raises(errors.SchemaError, match="no_such_query"):
        queries.get("no_such_query")


def test_sql_root_is_found_in_a_checkout() -> None:
    """In a checkout, sql/ next to the package holds the migrations and queries."""
    root = queries.sql_root()
    assert (root / "migrations" / "0001_history_store.sql").is_file()
    assert (root / "queries" / "store.sql").is_file()
