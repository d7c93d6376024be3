"""SQL is only ever a constant: every execute() in sync_worker/ takes named SQL or a literal, never a
string built from data (f-strings, %, +, .format). Values travel as parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sync_worker"
EXECUTORS = frozenset({"execute", "executemany", "copy", "stream"})
# CREATE DATABASE takes no bind parameters: named SQL with the name composed by psycopg.sql as a
# quoted identifier (psycopg.sql.Identifier), never as text.
ALLOWED_BUILT: set[tuple[str, str]] = {
    ("db.py", 'queries.get("create_database")).format(name=pg_sql.Identifier('),
    # Partition names from the catalog are composed the same way: retention._composed takes a query
    # name and psycopg.sql.Identifier values only.
    ("retention.py", '_composed("retention_'),
    ("retention.py", "cur.execute(paired, params)"),
    ("retention.py", "cur.execute(query, params)"),
}


def _is_constant_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()  # a module-level constant such as TOP_DEVICES_SQL
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        func = node.func
        # queries.get("name"): named SQL loaded from sql/queries/*.sql.
        if (
            func.attr == "get"
            and isinstance(func.value, ast.Name)
            and func.value.id == "queries"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
        ):
            return True
        # migration.sql(): the text of a versioned, checksummed migration file.
        if func.attr == "sql" and not node.args:
            return True
    return False


def _executions() -> list[tuple[str, int, ast.Call, str]]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in EXECUTORS
                and node.args
                # The standard library's copy.copy is no COPY statement.
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "copy")
            ):
                segment = ast.get_source_segment(source, node) or ""
                found.append((path.name, node.lineno, node, segment))
    return found


def test_the_scan_finds_the_store_queries() -> None:
    """The scan sees the store's execute() calls (so an empty result cannot pass by accident)."""
    files = {name for name, _, _, _ in _executions()}
    assert {"store.py", "migrations.py"} <= files


@pytest.mark.parametrize(
    ("name", "line", "call", "segment"),
    [pytest.param(*e, id=f"{e[0]}:{e[1]}") for e in _executions()],
)
def test_sql_text_is_never_built_from_data(name: str, line: int, call: ast.Call, segment: str) -> None:
    """Each execute() gets constant SQL; any dynamic value is a bind parameter."""
    if any(name == f and marker in segment for f, marker in ALLOWED_BUILT):
        return
    assert _is_constant_sql(call.args[0]), f"{name}:{line} builds SQL text: {segment[:120]}"
