"""docs/schema.md's tables, views and functions are the migrated database's own COMMENTs."""

from __future__ import annotations

from typing import Any

import psycopg

from tests import schema_doc


def test_every_table_column_view_and_function_has_a_comment(db: psycopg.Connection[Any]) -> None:
    """COMMENT ON covers every table, column, view and function the migrations build (BI tools show them)."""
    assert schema_doc.missing_comments(db) == []


def test_schema_doc_is_generated_from_the_database(db: psycopg.Connection[Any]) -> None:
    """The generated part of docs/schema.md equals what the migrated database says (`make schema-doc`)."""
    generated = schema_doc.render(db)
    stored = schema_doc.check_or_write("schema", generated)
    if stored is not None:
        assert stored == generated, "docs/schema.md is stale: run `make schema-doc`"
