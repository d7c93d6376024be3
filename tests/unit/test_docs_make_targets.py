"""The `make` commands the docs give are the Makefile's targets, and the README's benchmark list
names every benchmark target."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "tests" / "README.md"]


def targets() -> set[str]:
    """The Makefile's phony targets (every target a reader is meant to run is declared there)."""
    (line,) = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:")]
    return set(line.removeprefix(".PHONY:").split())


def test_every_make_command_in_the_docs_is_a_target() -> None:
    """A `make NAME` inside a code span or block of the docs is a target of the Makefile."""
    named: set[str] = set()
    for doc in DOCS:
        text = doc.read_text()
        code = re.findall(r"```[^\n]*\n(.*?)```", text, re.DOTALL) + re.findall(r"`([^`\n]+)`", text)
        for span in code:
            named.update(re.findall(r"(?<![\w-])make ([a-z][a-z0-9-]*)", span))
    assert {"run", "test", "lint", "chaos"} <= named
    assert named <= targets(), named - targets()


def test_the_readme_names_every_benchmark_target() -> None:
    """The README's "Benchmarks" section tells how to rerun each benchmark the Makefile has."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`make ([a-z0-9-]+)`", section))
    benchmarks = {t for t in targets() if t.startswith("bench")}
    assert len(benchmarks) >= 7
    assert named == benchmarks
