"""No Python module of the package, the benchmarks or the tests is over 600 lines (issue 25)."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIMIT = 600
CHECKED = ("sync_worker", "bench", "tests")
# Frozen copies of older code: they must stay byte for byte what they copy, so they are not split.
FROZEN = {
    "tests/fixtures/rows_0012.py": "rows.py as of 0c4399a, stored with by test_migration_0013.py",
}


def _modules() -> list[pathlib.Path]:
    return sorted(path for top in CHECKED for path in (ROOT / top).rglob("*.py"))


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("top", CHECKED)
def test_no_module_is_over_the_limit(top: str) -> None:
    """Every module of sync_worker/, bench/ and tests/ (test modules included) has at most 600 lines."""
    over = {
        str(path.relative_to(ROOT)): _lines(path)
        for path in _modules()
        if path.relative_to(ROOT).parts[0] == top
        and str(path.relative_to(ROOT)) not in FROZEN
        and _lines(path) > LIMIT
    }
    assert over == {}, f"split these by concept (shared helpers into a module or fixture): {over}"


def test_the_frozen_exceptions_exist_and_are_still_needed() -> None:
    """Each exempted frozen copy still exists and is still over the limit (else it leaves the list)."""
    for name in FROZEN:
        assert _lines(ROOT / name) > LIMIT, name


def test_the_walk_sees_test_modules_and_helpers() -> None:
    """The walk reaches test modules in every test directory and the helper modules beside them."""
    seen = {str(path.relative_to(ROOT)) for path in _modules()}
    assert {
        "tests/unit/test_module_size.py",
        "tests/integration/push.py",
        "tests/chaos/world.py",
        "sync_worker/client.py",
    } <= seen
