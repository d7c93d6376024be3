"""The package's imports follow the layers documented in docs/architecture.md, with no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sync_worker"
DOC = ROOT / "docs" / "architecture.md"


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


def top_level(module: str) -> str:
    """``sync_worker.simulator.core`` -> ``simulator``; ``sync_worker.cli`` -> ``cli``."""
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    """Top-level module -> the package's top-level modules it imports (anywhere in its code)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts == ("sync_worker", "__init__"):
            continue
        owner = top_level(".".join(parts))
        deps = found.setdefault(owner, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                if node.module == "sync_worker":
                    deps.update(alias.name for alias in node.names)
                elif node.module.startswith("sync_worker."):
                    deps.add(top_level(node.module))
            elif isinstance(node, ast.Import):
                deps.update(top_level(a.name) for a in node.names if a.name.startswith("sync_worker."))
        deps.discard(owner)
    return found


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
    graph = imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_function_level_imports_are_seen() -> None:
    """The walker finds imports inside functions: the lazy import of ``commands`` in ``cli`` is seen."""
    assert "commands" in imports()["cli"]  # imported inside main()
