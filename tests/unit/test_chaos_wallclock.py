"""The chaos machine's injectable wall clock reaches every worker module that reads the wall clock."""

from __future__ import annotations

import importlib
import pathlib
import re

from tests.chaos import wallclock

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "sync_worker"
# Readers of the wall clock that a daemon's step need not move, and why.
NOT_STEPPED = {
    "demo": "the demo is not the daemon",
    "doctor": "doctor is not the daemon",
    "errors": "the time a malformed block was received: a label, never compared",
    "receiver": "the receiver is not the daemon (its clock is injectable on its own)",
    "retention": "retention's cutoff is compared with stored timestamps, as an operator's command is",
    "simulator": "the platform keeps the real time",
}
_READS = re.compile(r"\bdatetime\.now\(|\.utcnow\(|\btime\.time\(\)")


def test_every_stepped_module_still_has_a_datetime_name_to_replace() -> None:
    """Each module the chaos clock steps still reads ``datetime`` (a split would make the step a no-op)."""
    for name in wallclock.MODULES:
        assert hasattr(importlib.import_module(name), "datetime"), name


def test_every_worker_module_reading_the_wall_clock_is_stepped_or_excused() -> None:
    """A new module of the worker that reads the wall clock is stepped by chaos, or says why not."""
    stepped = {name.rsplit(".", 1)[-1] for name in wallclock.MODULES if name.startswith("sync_worker.")}
    for path in sorted(PACKAGE.rglob("*.py")):
        if _READS.search(path.read_text(encoding="utf-8")) is None:
            continue
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert top in stepped or top in NOT_STEPPED, f"{path.name} reads the wall clock: step it or excuse it"
