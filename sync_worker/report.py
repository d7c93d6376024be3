"""What commands show: plain text tables and JSON-ready values (``status``, ``quarantine``, the demo)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any, Final

from sync_worker import status, store

_MAX_CELL: Final = 48

STATUS_COLUMNS: Final = (
    ("account_name", "account"),
    ("cursor_present", "cursor"),
    ("last_success_at", "last success"),
    ("lag_seconds", "lag s"),
    ("row_count", "rows"),
    ("last_run_outcome", "last run"),
    ("running_on", "running on"),
    ("quarantined", "quarantined"),
    ("last_error", "last error"),
)
ACCOUNT_COLUMNS: Final = (
    "account_name",
    "configured",
    "in_database",
    "cursor_present",
    "last_success_at",
    "last_run_at",
    "runs",
)
QUARANTINE_COLUMNS: Final = (
    "id",
    "account_name",
    "http_status",
    "body_size",
    "seen_count",
    "first_stored_at",
    "resolved_at",
    "problem",
)


def jsonable(value: Any) -> Any:
    """``value`` with datetimes, dataclasses and tuples turned into what ``json.dumps`` takes."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table; long cells are cut, times shown in UTC."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        if isinstance(value, datetime.datetime):
            return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        text = str(value).replace("\n", " ")
        return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)
    return "\n".join(lines)


def status_rows(conn: store.Connection) -> list[dict[str, Any]]:
    """``status.account_status`` as plain dicts (``status`` and the demo)."""
    return [dataclasses.asdict(s) for s in status.account_status(conn)]


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no accounts synced yet)"
    renamed = [{title: row.get(key) for key, title in STATUS_COLUMNS} for row in rows]
    for row in renamed:
        row["cursor"] = "stored" if row["cursor"] else "head"
    return table(renamed, [title for _, title in STATUS_COLUMNS])


# Last-run outcomes that mean the account is not being synced.
FAILING_OUTCOMES: Final = frozenset({"failed", "guard_tripped"})


def status_problems(
    rows: Sequence[dict[str, Any]], configured: Sequence[str], *, stale_after: float
) -> list[dict[str, Any]]:
    """What ``status --check`` reports: per account, each reason it needs an operator.

    A configured account the database has never seen counts as stale: it never synced.
    """
    problems: list[dict[str, Any]] = []
    seen = {str(r["account_name"]) for r in rows}
    for name in sorted(set(configured) - seen):
        problems.append({"account": name, "problem": "stale", "detail": "never synced"})
    for row in rows:
        name = str(row["account_name"])
        lag = row.get("lag_seconds")
        if lag is None:
            problems.append({"account": name, "problem": "stale", "detail": "no successful run recorded"})
        elif lag > stale_after:
            problems.append(
                {
                    "account": name,
                    "problem": "stale",
                    "detail": f"last success {lag:.0f} s ago (> {stale_after:g})",
                }
            )
        if row.get("last_run_outcome") in FAILING_OUTCOMES:
            problems.append(
                {
                    "account": name,
                    "problem": "failing",
                    "detail": f"last run {row['last_run_outcome']}: {row.get('last_error') or '-'}",
                }
            )
        if row.get("quarantined"):
            problems.append(
                {
                    "account": name,
                    "problem": "quarantined",
                    "detail": f"{row['quarantined']} unresolved quarantined blocks (`quarantine list`)",
                }
            )
    return problems


def quarantine_dict(block: Any) -> dict[str, Any]:
    """A quarantined block without its body: the body is data, shown only on request."""
    shown = dataclasses.asdict(block)
    shown.pop("body", None)
    return shown
