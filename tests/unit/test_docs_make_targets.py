"""The `make` commands the docs give are the Makefile's targets, the README's benchmark list names
every benchmark target, and `make test` needs nothing a fresh clone lacks."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def test_make_test_needs_no_pgbouncer_package(tmp_path: Path) -> None:
    """The README promises a fresh clone needs only Python and make: where PgBouncer is not installed
    and cannot be (no apt-get rights), the step `make test` runs first says so and does not fail."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    apt_get = stubs / "apt-get"
    apt_get.write_text("#!/bin/sh\necho 'E: Could not open lock file (are you root?)' >&2\nexit 100\n")
    apt_get.chmod(0o755)
    make = shutil.which("make")
    assert make is not None
    # Only the stubs on the PATH: no pgbouncer, and an apt-get that refuses like a non-root user's.
    ran = subprocess.run(
        [make, "--no-print-directory", "pgbouncer"],
        cwd=ROOT,
        env={"PATH": str(stubs)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "the PgBouncer tests will skip" in ran.stdout
    assert "are you root?" in ran.stderr  # the stub was asked, so pgbouncer was looked for and missing
