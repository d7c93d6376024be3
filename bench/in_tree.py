"""``python -m bench.in_tree <tree> <sync-worker arguments...>``: a tree's own ``python -m sync_worker``.

The before/after benchmarks run an older tree's worker beside this one's: the parent sets
``PYTHONPATH`` (the tree first, this checkout second for ``bench``) and the working directory to
the tree. Here, in the child, the import is checked to really resolve to that tree (package and
``sql/``) before ``sync_worker``'s ``__main__`` runs exactly as ``python -m sync_worker`` would,
so a wrong path fails loudly instead of measuring the wrong code. Only the standard library is
imported on top of what the worker imports itself: the check costs the measured process nothing.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def identity() -> dict[str, str]:
    """Where ``sync_worker`` and its ``sql/`` were imported from: proof of which tree is measured."""
    import sync_worker
    from sync_worker import queries

    return {
        "sync_worker": str(Path(sync_worker.__file__).resolve().parent),
        "sql_root": str(queries.sql_root().resolve()),
    }


def check(tree: Path) -> dict[str, str]:
    """``identity()``, or RuntimeError when it is not ``tree``'s."""
    found = identity()
    expected = tree.resolve()
    if Path(found["sync_worker"]) != expected / "sync_worker" or Path(found["sql_root"]) != expected / "sql":
        raise RuntimeError(f"measuring the wrong tree: expected {expected}, imported {found}")
    return found


def env_for(tree: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with ``PYTHONPATH`` importing ``tree``'s ``sync_worker``.

    The tree first: it shadows the editable install's path entry (which comes after
    ``PYTHONPATH``); this checkout second, for ``bench``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(ROOT)])
    return env


def argv(tree: Path, *args: str) -> list[str]:
    """The command line that runs ``python -m sync_worker *args`` from ``tree`` (checked)."""
    return [sys.executable, "-m", "bench.in_tree", str(tree), *args]


def main(args: Sequence[str]) -> None:
    check(Path(args[0]))
    sys.argv = ["sync_worker", *args[1:]]
    runpy.run_module("sync_worker", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
