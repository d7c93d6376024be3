"""The README points to the retention dry run's example, and the example shows exact counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_retention_row_links_the_example() -> None:
    """The README's `retention` row links to docs/operations.md's "Retention" section."""
    (row,) = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `retention ")
    ]
    assert "(docs/operations.md#retention)" in row and "exact" in row
    assert "\n## Retention\n" in (ROOT / "docs" / "operations.md").read_text()


def test_retention_example_shows_exact_row_counts_that_add_up() -> None:
    """The example dry run has a whole number of rows per partition (no estimate), and its
    `messages` total is the sum of the sms_message partitions it drops or deletes from."""
    section = (
        (ROOT / "docs" / "operations.md").read_text().split("\n## Retention\n", 1)[1].split("\n## ", 1)[0]
    )
    (example,) = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    plan = json.loads(example)
    assert plan["dry_run"] is True
    entries = [e for key in ("drop", "delete", "wait") for e in plan[key]]
    assert entries and all(isinstance(e["rows"], int) for e in entries)
    assert not any("estimate" in key for e in entries for key in e)
    removed = sum(
        e["rows"]
        for key in ("drop", "delete")
        for e in plan[key]
        if e["partition"].startswith("sms_message_p") or e["partition"] == "sms_message_undated"
    )
    assert plan["messages"] == removed
