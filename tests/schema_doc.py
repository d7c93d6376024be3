"""docs/schema.md's generated part: tables, views and functions with their COMMENTs, from a migrated database.

The comments in ``sql/migrations`` are the one source of what every object means; this renders them so
the page and the database (and what BI tools show) cannot disagree. ``make schema-doc`` rewrites the
page (``SYNC_WRITE_SCHEMA_DOC=1``); ``tests/integration/test_schema_doc.py`` fails when it is stale.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

import psycopg

DOC: Final = Path(__file__).resolve().parents[1] / "docs" / "schema.md"
WRITE_ENV: Final = "SYNC_WRITE_SCHEMA_DOC"
_TYPE_ALIASES: Final = {
    "timestamp with time zone": "timestamptz",
    "timestamp with time zone[]": "timestamptz[]",
}
_INDEX_RE: Final = re.compile(r"^CREATE (UNIQUE )?INDEX (\S+) ON (?:ONLY )?\S+ USING (\w+) (.*)$")

_RELATIONS: Final = """
SELECT c.oid, c.relname, c.relkind, obj_description(c.oid, 'pg_class'),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition
ORDER BY c.relkind = 'v', c.relname
"""
_COLUMNS: Final = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_INDEXES: Final = (
    "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s ORDER BY indexrelid::regclass::text"
)
_FUNCTIONS: Final = """
SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       obj_description(p.oid, 'pg_proc')
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
ORDER BY p.proname
"""


def missing_comments(conn: psycopg.Connection[Any]) -> list[str]:
    """Every documented object (relation, column, function) without a comment."""
    missing: list[str] = []
    for oid, name, _kind, comment, _key in conn.execute(_RELATIONS).fetchall():
        if not comment:
            missing.append(name)
        missing.extend(
            f"{name}.{col}" for col, _t, text in conn.execute(_COLUMNS, (oid,)).fetchall() if not text
        )
    missing.extend(f"{name}()" for name, _a, _r, text in conn.execute(_FUNCTIONS).fetchall() if not text)
    return missing


def render(conn: psycopg.Connection[Any]) -> str:
    """The generated sections (tables, views, functions), in Markdown."""
    out: list[str] = []
    relations = conn.execute(_RELATIONS).fetchall()
    for heading, kinds in (("Tables", ("r", "p")), ("Views", ("v",))):
        out.append(f"## {heading}\n")
        for oid, name, kind, comment, partition_key in relations:
            if kind not in kinds:
                continue
            out.append(f"### `{name}`\n")
            out.append(_cell(comment or "") + "\n")
            out.append("| column | type | meaning |\n|---|---|---|")
            for column, data_type, text in conn.execute(_COLUMNS, (oid,)).fetchall():
                shown = _TYPE_ALIASES.get(data_type, data_type)
                out.append(f"| `{column}` | {shown} | {_cell(text or '')} |")
            out.append("")
            details = [_index(row[0]) for row in conn.execute(_INDEXES, (oid,)).fetchall()]
            if partition_key:
                details.insert(0, f"partitioned by `{partition_key}`")
            if details:
                out.append("".join(f"- {d}\n" for d in details))
    out.append("## Functions\n")
    for name, arguments, result, comment in conn.execute(_FUNCTIONS).fetchall():
        out.append(f"### `{name}({arguments})` returns `{result}`\n")
        out.append(_cell(comment or "") + "\n")
    return "\n".join(out).rstrip() + "\n"


def _index(definition: str) -> str:
    match = _INDEX_RE.match(definition)
    if match is None:
        return f"`{definition}`"
    unique, name, method, rest = match.groups()
    return f"index `{name}`: {'unique ' if unique else ''}{method} `{rest}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def between(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the generated block ``name`` (between its two marker lines)."""
    begin = f"<!-- {name}:begin -->\n"
    end = f"<!-- {name}:end -->"
    start = text.index(begin) + len(begin)
    return start, text.index(end, start)


def check_or_write(name: str, generated: str, doc: Path = DOC) -> str | None:
    """Write ``generated`` into block ``name`` when asked to (``SYNC_WRITE_SCHEMA_DOC=1``), else return
    the stored block for comparison (None after writing)."""
    text = doc.read_text(encoding="utf-8")
    start, end = between(text, name)
    if os.environ.get(WRITE_ENV) == "1":
        doc.write_text(text[:start] + generated + text[end:], encoding="utf-8")
        return None
    return text[start:end]
