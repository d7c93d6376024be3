"""What the history tables occupy on disk: every table and partition of either layout (v1's plain
tables, v2's partitioned ones), split into heap, TOAST and indexes, and each column's stored width.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

# Every table of either layout that holds history; views (v2's sms_history) are not counted.
HISTORY_TABLES: Final = ("sms_history", "sms_history_device", "sms_message", "sms_message_device")

_LEAVES = """
WITH roots AS (
    SELECT c.oid, c.relname::text AS root, c.relkind
    FROM pg_class c
    WHERE c.relname = ANY(%(names)s) AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)
), leaves AS (
    -- pg_partition_tree lists nothing for a plain (v1) table: the table is its own leaf.
    SELECT r.root, t.relid
    FROM roots r CROSS JOIN LATERAL pg_partition_tree(r.oid) t
    WHERE t.isleaf
    UNION
    SELECT r.root, r.oid FROM roots r WHERE r.relkind = 'r'
)
"""


def sizes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Total relation size of every history table and partition, split into heap, TOAST, indexes."""
    tables = conn.execute(
        _LEAVES
        + """
        SELECT l.root, count(*) AS pieces,
               sum(pg_relation_size(l.relid, 'main'))::bigint AS heap,
               sum(pg_relation_size(l.relid, 'fsm') + pg_relation_size(l.relid, 'vm'))::bigint AS maps,
               sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0))::bigint AS toast,
               sum(pg_indexes_size(l.relid))::bigint AS indexes,
               sum(pg_total_relation_size(l.relid))::bigint AS total
        FROM leaves l JOIN pg_class c ON c.oid = l.relid
        GROUP BY l.root ORDER BY l.root
        """,
        {"names": list(HISTORY_TABLES)},
    ).fetchall()
    indexes = conn.execute(
        _LEAVES
        + """
        SELECT l.root, coalesce(pg_partition_root(i.indexrelid), i.indexrelid)::regclass::text,
               count(*), sum(pg_relation_size(i.indexrelid))::bigint
        FROM leaves l JOIN pg_index i ON i.indrelid = l.relid
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        {"names": list(HISTORY_TABLES)},
    ).fetchall()
    keys = ("pieces", "heap", "maps", "toast", "indexes", "total")
    return {
        "tables": {str(r[0]): dict(zip(keys, (int(v) for v in r[1:]), strict=True)) for r in tables},
        "indexes": [
            {"table": str(r[0]), "index": str(r[1]), "pieces": int(r[2]), "bytes": int(r[3])} for r in indexes
        ],
        "total": sum(int(r[6]) for r in tables),
    }


def column_widths(conn: psycopg.Connection[Any], table: str) -> dict[str, float]:
    """Average stored size per row of each column (``pg_column_size``, NULL = 0) and of the row datum."""
    cols = [
        str(r[0])
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
    ]
    # Per row, a NULL counting 0 (avg() would skip NULLs and overstate a mostly-NULL column).
    exprs = [sql.SQL("avg(pg_column_size(t.*))")] + [
        sql.SQL("avg(coalesce(pg_column_size(t.{}), 0))").format(sql.Identifier(c)) for c in cols
    ]
    query = sql.SQL("SELECT {} FROM {} t").format(sql.SQL(", ").join(exprs), sql.Identifier(table))
    row = conn.execute(query).fetchone()
    assert row is not None
    names = ["(row datum)", *cols]
    return {n: round(float(v or 0.0), 1) for n, v in zip(names, row, strict=True)}


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def history_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind IN ('r', 'p')"
            " AND pg_table_is_visible(oid) ORDER BY relname",
            (list(HISTORY_TABLES),),
        ).fetchall()
    ]
