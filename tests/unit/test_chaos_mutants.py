"""The teeth table's reintroduced defects (``tests/chaos/mutants``) still apply to the tree as it is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MUTANTS = sorted((REPO / "tests" / "chaos" / "mutants").glob("*.patch"))


def test_every_defect_of_the_teeth_table_has_a_patch() -> None:
    """(a)-(c), the daemon's (d) and the receiver's (e) are each a patch; docs/testing.md names each."""
    assert [p.name[:2] for p in MUTANTS] == ["a-", "b-", "c-", "d-", "e-"]
    table = (REPO / "docs" / "testing.md").read_text(encoding="utf-8")
    assert all(f"tests/chaos/mutants/{p.name}" in table for p in MUTANTS)


@pytest.mark.parametrize("patch", MUTANTS, ids=lambda p: p.name)
def test_the_mutant_patch_applies_cleanly(patch: Path) -> None:
    """``git apply --check`` accepts the patch: the defect can still be reintroduced and measured."""
    done = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
