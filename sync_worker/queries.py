"""Named SQL blocks from ``sql/queries/*.sql``, parsed once.

A file holds blocks introduced by ``-- name: <name>`` lines; a block runs until
the next such line. Python code asks for a block by name so that every SQL
statement the worker runs lives in ``sql/``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, LiteralString

from sync_worker import errors

_NAME_RE: Final = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


def sql_root() -> Path:
    """The ``sql/`` directory: inside the package in a wheel, next to it in a checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "sql", package_dir.parent / "sql"):
        if (candidate / "queries").is_dir():
            return candidate
    raise errors.SchemaError(f"no sql/ directory found next to or inside {package_dir}")


def parse(text: str, source: str = "<string>") -> dict[str, str]:
    """Split one file into its named blocks; duplicate or empty blocks are errors."""
    blocks: dict[str, str] = {}
    matches = list(_NAME_RE.finditer(text))
    for i, match in enumerate(matches):
        name = match.group(1)
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if name in blocks:
            raise errors.SchemaError(f"query {name!r} is defined twice in {source}")
        if not _strip_comments(body):
            raise errors.SchemaError(f"query {name!r} in {source} is empty")
        blocks[name] = body
    return blocks


@functools.cache
def load() -> Mapping[str, str]:
    """Every named block of every ``sql/queries/*.sql`` file."""
    found: dict[str, str] = {}
    for path in sorted((sql_root() / "queries").glob("*.sql")):
        for name, body in parse(path.read_text(encoding="utf-8"), str(path)).items():
            if name in found:
                raise errors.SchemaError(f"query {name!r} is defined in more than one file ({path})")
            found[name] = body
    return found


def get(name: str) -> LiteralString:
    """The SQL of one named block."""
    try:
        text = load()[name]
    except KeyError:
        raise errors.SchemaError(f"no query named {name!r} in {sql_root() / 'queries'}") from None
    # The text comes from files shipped with the package, never from input, so it
    # is as trustworthy as a literal in the source (mypy treats str as LiteralString).
    return text


def _strip_comments(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()
