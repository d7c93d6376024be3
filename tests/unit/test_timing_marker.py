"""Every test that asserts a wall-clock bound carries the ``timing`` marker (pyproject.toml), so a run on a
saturated machine can tell a slow machine from a broken behaviour (``-m "not timing"``; tests/README.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_CLOCKS = frozenset({"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns"})


def _is_clock_difference(node: ast.AST) -> bool:
    """``time.monotonic() - started`` (any of the wall clocks, read now, minus something)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)):
        return False
    left = node.left
    return (
        isinstance(left, ast.Call)
        and isinstance(left.func, ast.Attribute)
        and left.func.attr in _CLOCKS
        and isinstance(left.func.value, ast.Name)
        and left.func.value.id == "time"
    )


def asserts_a_wall_clock_bound(function: ast.FunctionDef) -> bool:
    """An ``assert`` in ``function`` uses an elapsed time: a clock difference, or a name computed from one."""
    timed: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(_is_clock_difference(n) for n in ast.walk(node.value)):
            timed.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def elapsed(n: ast.AST) -> bool:
        return _is_clock_difference(n) or (isinstance(n, ast.Name) and n.id in timed)

    return any(
        isinstance(node, ast.Assert) and any(elapsed(n) for n in ast.walk(node))
        for node in ast.walk(function)
    )


def _marked_timing(function: ast.FunctionDef) -> bool:
    return any(
        isinstance(d, ast.Attribute) and d.attr == "timing" and ast.unparse(d) == "pytest.mark.timing"
        for d in function.decorator_list
    )


def _test_functions(path: Path) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            yield node


def test_every_test_asserting_a_wall_clock_bound_is_marked_timing() -> None:
    """A test function that asserts on an elapsed wall-clock time is decorated ``@pytest.mark.timing``."""
    found = [
        (path.relative_to(ROOT), f.name)
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        for f in _test_functions(path)
        if asserts_a_wall_clock_bound(f)
    ]
    assert ("tests/unit/test_rows.py", "test_build_rows_is_fast_enough") in [(str(p), n) for p, n in found]
    unmarked = [f"{p}::{n}" for p, n in found if not _marked_timing(_function(ROOT / p, n))]
    assert not unmarked, f"assert a wall-clock bound without @pytest.mark.timing: {unmarked}"


def _function(path: Path, name: str) -> ast.FunctionDef:
    return next(f for f in _test_functions(path) if f.name == name)


def test_the_detector_tells_a_bound_from_a_report() -> None:
    """An asserted elapsed time counts; an elapsed time only reported, or a deadline, does not."""
    bound = "def test_a():\n    t = time.monotonic()\n    e = time.monotonic() - t\n    assert e < 1\n"
    inline = "def test_b():\n    t = time.perf_counter()\n    assert time.perf_counter() - t < 1\n"
    report = "def test_c():\n    t = time.perf_counter()\n    s = time.perf_counter() - t\n    print(s)\n"
    deadline = "def test_d():\n    d = time.monotonic() + 5\n    assert time.monotonic() < d\n"

    def detected(source: str) -> bool:
        function = ast.parse(source).body[0]
        assert isinstance(function, ast.FunctionDef)
        return asserts_a_wall_clock_bound(function)

    assert detected(bound) and detected(inline)
    assert not detected(report) and not detected(deadline)
