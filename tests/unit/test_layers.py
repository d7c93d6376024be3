"""The package's imports follow the layers documented in docs/architecture.md, with no cycle.

Every way one module can load another is seen: ``import``, ``from ... import``, relative imports
(resolved against the importing file's package) and ``importlib.import_module`` /
``__import__`` with a literal name. A dynamic import whose name is not a literal cannot be
checked, so it is refused. ``bench/`` and ``tests/`` are held to "no cycle" too.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sync_worker"
DOC = ROOT / "docs" / "architecture.md"
_DYNAMIC = frozenset({"import_module", "__import__"})


def documented_layers() -> dict[str, int]:
    """Module -> layer number, from the doc's "| N name | `a`, `b` |" rows."""
    layers: dict[str, int] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| (\d+) [a-z ]+ \| (.+) \|$", line)
        if match:
            for name in re.findall(r"`([a-z_]+)`", match.group(2)):
                assert name not in layers, f"{name} is in two layers of the doc"
                layers[name] = int(match.group(1))
    return layers


def module_name(path: Path) -> str:
    """``ROOT/sync_worker/simulator/core.py`` -> ``sync_worker.simulator.core`` (a package: its name)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _absolute(path: Path, module: str | None, level: int) -> str:
    """The absolute name a (possibly relative) ``from`` clause names."""
    if level == 0:
        return module or ""
    base = _package_of(path).split(".")
    if level - 1 >= len(base):
        raise AssertionError(f"{path}: relative import beyond the top of the tree")
    parts = base[: len(base) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def imported_names(path: Path, tree: ast.AST | None = None) -> Iterator[str]:
    """Every absolute dotted name ``path`` imports: ``from a import b`` yields ``a.b`` (b may be a
    module or a name in ``a``), relative imports resolved, literal ``importlib.import_module``."""
    source = tree if tree is not None else ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(source):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(path, node.module, node.level)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in _DYNAMIC:
                continue
            target = node.args[0] if node.args else None
            if not (isinstance(target, ast.Constant) and isinstance(target.value, str)):
                # The package's layers must be checkable; tests and bench may load what they compute.
                if path.is_relative_to(PACKAGE):
                    raise AssertionError(
                        f"{path}:{node.lineno}: {called} of a computed name cannot be checked"
                    )
                continue
            if target.value.startswith("."):
                level = len(target.value) - len(target.value.lstrip("."))
                yield _absolute(path, target.value[level:] or None, level)
            else:
                yield target.value


def top_level(module: str) -> str:
    """``sync_worker.simulator.core`` -> ``simulator``; ``sync_worker.cli`` -> ``cli``."""
    return module.split(".")[1]


@functools.cache  # parsed once for the whole module
def imports() -> dict[str, set[str]]:
    """Top-level module -> the package's top-level modules it imports (anywhere in its code)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name == "sync_worker":
            continue
        owner = top_level(name)
        deps = found.setdefault(owner, set())
        deps.update(top_level(n) for n in imported_names(path) if n.startswith("sync_worker."))
        deps.discard(owner)
    return found


def module_graph(*roots: str) -> dict[str, set[str]]:
    """Module -> the modules of ``roots`` (directories under ROOT) it imports, module by module."""
    paths = {module_name(p): p for root in roots for p in sorted((ROOT / root).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = {n for n in imported_names(path) if n in paths}
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: Mapping[str, Set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_module_is_in_exactly_one_documented_layer() -> None:
    """The doc's layer table names every module of the package, and nothing else."""
    assert set(documented_layers()) == set(imports())


@pytest.mark.parametrize("module", sorted(imports()))
def test_imports_go_down_or_sideways(module: str) -> None:
    """A module imports only modules of its own layer or lower ones."""
    layers = documented_layers()
    upward = sorted(d for d in imports()[module] if layers[d] > layers[module])
    assert not upward, f"{module} (layer {layers[module]}) imports higher layers: {upward}"


def test_no_import_cycle() -> None:
    """The graph of imports between the package's modules has no cycle."""
    cycle = find_cycle(imports())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_bench_and_tests_have_no_import_cycle() -> None:
    """No module of ``bench/`` or ``tests/`` imports, directly or not, one that imports it back."""
    graph = module_graph("bench", "tests")
    assert "bench.scenarios" in graph["bench.run"]  # the graph sees bench's own imports
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_package_never_imports_bench_or_tests() -> None:
    """Product code depends on neither the benchmarks nor the tests."""
    bad = sorted(
        f"{module_name(path)} -> {name}"
        for path in PACKAGE.rglob("*.py")
        for name in imported_names(path)
        if name.split(".")[0] in {"bench", "tests"}
    )
    assert not bad


def test_function_level_imports_are_seen() -> None:
    """The walker finds imports inside functions: the lazy import of ``commands`` in ``cli`` is seen."""
    assert "commands" in imports()["cli"]  # imported inside main()


def _names_in(source: str, path: str) -> set[str]:
    return set(imported_names(ROOT / path, ast.parse(source)))


def test_relative_imports_are_resolved_against_the_importing_package() -> None:
    """``from .. import app`` in ``simulator/core.py`` and ``from .app import x`` in ``store.py`` both
    name ``sync_worker.app``, so a relative upward import breaks the layer rule like an absolute one."""
    assert "sync_worker.app" in _names_in("from .. import app\n", "sync_worker/simulator/core.py")
    assert "sync_worker.app" in _names_in("from .app import x\n", "sync_worker/store.py")
    sideways = _names_in("from . import hooks\n", "sync_worker/simulator/core.py")
    assert "sync_worker.simulator.hooks" in sideways
    with pytest.raises(AssertionError, match="beyond the top"):
        _names_in("from ... import x\n", "sync_worker/store.py")


def test_dynamic_imports_are_seen_or_refused() -> None:
    """``importlib.import_module("sync_worker.app")`` counts as an import; a computed name fails the test."""
    source = "import importlib\nimportlib.import_module('sync_worker.app')\n__import__('sync_worker.cli')\n"
    assert {"sync_worker.app", "sync_worker.cli"} <= _names_in(source, "sync_worker/store.py")
    with pytest.raises(AssertionError, match="computed name"):
        _names_in("import importlib\nimportlib.import_module(name)\n", "sync_worker/store.py")


def test_a_cycle_is_found() -> None:
    """find_cycle reports a cycle (here of three modules) and accepts a graph without one."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
