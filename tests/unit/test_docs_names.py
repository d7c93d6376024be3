"""docs/architecture.md names only what exists: every backticked ``module.name`` resolves in the package,
the ``app`` signatures it shows are the functions' own, and the modules it says translate the database
driver's errors are the ones that catch them."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sync_worker"
DOC = ROOT / "docs" / "architecture.md"

# A dotted name not inside a path or a longer name: `store.commit_block(...)`, `simulator.push.Pusher`,
# `simulator.CODE_*`; `sql/queries/store.sql` and `c.sms.x` are not references to a module.
_REFERENCE = re.compile(r"(?<![\w./\-])((?:[a-z_][a-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(\*?)")


def modules() -> frozenset[str]:
    """The package's top-level modules and subpackages (``store``, ``simulator``...)."""
    return frozenset(
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    )


def code_of(markdown: str) -> list[str]:
    """The text of every fenced block and inline code span."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def references(markdown: str) -> set[str]:
    """Every dotted name in code whose first part is one of the package's modules (``sync_worker.``
    stripped); a trailing ``*`` (``simulator.CODE_*``) stays, meaning "some name with this prefix"."""
    names = modules()
    found: set[str] = set()
    for code in code_of(markdown):
        for match in _REFERENCE.finditer(code):
            dotted = match.group(1).removeprefix("sync_worker.")
            if dotted.split(".")[0] in names:
                found.add(dotted + match.group(2))
    return found


def _instance_fields(cls: type) -> set[str]:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for klass in cls.__mro__:
        fields.update(getattr(klass, "__annotations__", {}))
    return fields


def resolve(reference: str) -> str | None:
    """None if ``reference`` names something in the package, else what is missing."""
    parts = reference.split(".")
    obj: object = importlib.import_module(f"sync_worker.{parts[0]}")
    for i, part in enumerate(parts[1:], start=1):
        where = ".".join(parts[:i])
        if part.endswith("*"):
            if not any(name.startswith(part[:-1]) for name in dir(obj)):
                return f"no name {part} in {where}"
            return None
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif (
            isinstance(obj, types.ModuleType)
            and hasattr(obj, "__path__")
            and importlib.util.find_spec(f"{obj.__name__}.{part}")
        ):
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        elif isinstance(obj, type) and part in _instance_fields(obj):
            return None  # an instance attribute: its type is not followed further
        else:
            return f"{where} has no {part}"
    return None


@functools.cache
def documented() -> list[str]:
    return sorted(references(DOC.read_text(encoding="utf-8")))


def test_the_doc_names_many_things() -> None:
    """The reader finds the doc's references (so an empty parse cannot pass the next test)."""
    found = documented()
    assert {"store.commit_block", "gate.release", "simulator.Simulator", "db.transaction"} <= set(found)
    assert len(found) > 100


@pytest.mark.parametrize("reference", documented())
def test_every_name_the_doc_uses_exists(reference: str) -> None:
    """A backticked ``module.name`` in docs/architecture.md resolves to a module, class, function or
    attribute of the package (classes are followed into their methods and fields)."""
    problem = resolve(reference)
    assert problem is None, f"docs/architecture.md names `{reference}`: {problem}"


def test_a_stale_name_is_caught() -> None:
    """The checker reports a name that is gone, and accepts what the package has."""
    text = "`store.clear_failure_streak(conn, a)`, `store.finish_run`, `sync_worker.gate.Ticket`, `c.sms.x`"
    found = references(text)
    assert found == {"store.clear_failure_streak", "store.finish_run", "gate.Ticket"}
    assert resolve("store.clear_failure_streak") == "store has no clear_failure_streak"
    assert resolve("dispatch.Dispatcher.no_such_method") == "dispatch.Dispatcher has no no_such_method"
    assert resolve("store.finish_run") is None
    assert resolve("simulator.CODE_*") is None
    assert resolve("outcomes.AccountResult.quarantined") is None  # a dataclass field


# --- where the database driver's errors become project errors -------------------------------------

_DRIVERS = frozenset({"psycopg", "psycopg_pool"})


def _names_driver(node: ast.expr | None) -> bool:
    return node is not None and any(isinstance(n, ast.Name) and n.id in _DRIVERS for n in ast.walk(node))


def modules_catching_driver_errors() -> set[str]:
    """Top-level modules with an ``except`` clause naming a ``psycopg`` / ``psycopg_pool`` error."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.ExceptHandler) and _names_driver(n.type) for n in ast.walk(tree)):
            found.add(path.relative_to(PACKAGE).parts[0].removesuffix(".py"))
    return found


def documented_translators() -> set[str]:
    """The modules the doc's "driver's errors are caught only in ..." sentence lists."""
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    match = re.search(r"the database driver's errors are caught only in (.+?);", text)
    assert match, "docs/architecture.md no longer says where the driver's errors are caught"
    return set(re.findall(r"`([a-z_]+)`", match.group(1)))


def test_the_doc_lists_every_module_that_catches_driver_errors() -> None:
    """The modules docs/architecture.md says translate psycopg's errors are exactly those that catch them."""
    assert "db" in modules_catching_driver_errors()
    assert documented_translators() == modules_catching_driver_errors()


def _documented_app_signatures() -> dict[str, list[str]]:
    """``app.NAME(a, *, b=...)`` of the doc's "config, db, app" block: NAME -> parameter names."""
    section = DOC.read_text().split("### config, db, app", 1)[1]
    (block,) = re.findall(r"```python\n(.*?)```", section.split("\n### ", 1)[0], re.DOTALL)
    joined = re.sub(r"\n\s+(?=\S)", " ", block)  # continuation lines onto their call
    found: dict[str, list[str]] = {}
    for statement in re.split(r";|\n", joined):
        match = re.match(r"\s*app\.(\w+)\(([^)]*)\)", statement)
        if match:
            params = [p.split("=")[0].strip() for p in match.group(2).split(",")]
            found[match.group(1)] = [p for p in params if p and p != "*"]
    return found


def test_the_app_signatures_the_doc_shows_are_the_functions_parameters() -> None:
    """Each ``app.*`` signature in docs/architecture.md lists the function's parameters, in order."""
    documented = _documented_app_signatures()
    assert len(documented) >= 15
    app = importlib.import_module("sync_worker.app")
    for name, params in documented.items():
        actual = list(inspect.signature(getattr(app, name)).parameters)
        assert params == actual, (name, params, actual)
