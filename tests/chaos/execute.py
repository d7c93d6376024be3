"""Running one schedule: its fault passes, then passes without faults until it drains, then the checks.

Fault passes run the worker (in this process, or as real processes) with the pass's own settings
(base URL spelling, user name case, a stale password) while the schedule's events fire. Then every
fault stops: the drain passes use the canonical settings, and an operator follows the README when a
pass exits 4 (one login in the portal, which clears the vendor's count; then ``auth reset``).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Final, Protocol

from sync_worker import exitcodes
from tests.chaos import inproc, invariants, pg, procs
from tests.chaos import schedule as sched
from tests.chaos import world as worldmod

# The worker's settings in each mode: short network timeouts; in-process, waits are virtual.
INPROC_ENV: Final = {
    "THINGSPACE_CONNECT_TIMEOUT": "2",
    "THINGSPACE_READ_TIMEOUT": "0.5",
    "SYNC_RUN_BUDGET_SECONDS": "300",
}
PROCESS_ENV: Final = {
    "THINGSPACE_CONNECT_TIMEOUT": "2",
    "THINGSPACE_READ_TIMEOUT": "1",
    "THINGSPACE_RETRY_MAX_WAIT": "0.2",
    "THINGSPACE_RETRY_MAX_RETRY_AFTER": "1",
    "SYNC_RUN_BUDGET_SECONDS": "30",
    "SYNC_LOG_FORMAT": "json",
    "SYNC_LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}


@dataclasses.dataclass
class Result:
    """What one schedule did and which promises it broke (picklable: it crosses process pools)."""

    schedule: dict[str, Any]
    violations: list[invariants.Violation]
    passes: list[dict[str, Any]]
    notes: list[str]
    seconds: float
    injected: int = 0
    acknowledged: int = 0
    platform_lost: int = 0
    error: str | None = None

    @property
    def seed(self) -> int:
        return int(self.schedule["seed"])

    @property
    def failed(self) -> bool:
        return bool(self.violations) or self.error is not None

    def codes(self) -> set[str]:
        found = {v.code for v in self.violations}
        return found | ({"error"} if self.error is not None else set())


class Recorded(Protocol):
    """What a schedule's world keeps of what happened: its passes, notes and messages injected."""

    records: list[worldmod.PassRecord]
    notes: list[str]
    injected: int


def result(
    schedule: dict[str, Any],
    world: Recorded,
    started: float,
    *,
    violations: list[invariants.Violation],
    acknowledged: int,
    platform_lost: int,
    error: str | None,
) -> Result:
    """The ``Result`` of a schedule that began at ``started`` (monotonic) in ``world``."""
    return Result(
        schedule=schedule,
        violations=violations,
        passes=[dataclasses.asdict(r) for r in world.records],
        notes=world.notes,
        seconds=round(time.monotonic() - started, 3),
        injected=world.injected,
        acknowledged=acknowledged,
        platform_lost=platform_lost,
        error=error,
    )


def run(schedule: sched.Schedule, dbs: pg.Databases) -> Result:
    started = time.monotonic()
    process = schedule.mode == "process"
    run_pass = procs.run_pass if process else inproc.run_pass
    world = worldmod.World(
        schedule,
        dbs,
        timeout_seconds=1.2 if process else 0.7,
        operator=procs.operator if process else inproc.operator,
    )
    extra = PROCESS_ENV if process else INPROC_ENV
    checker = invariants.Checker(world)
    violations: list[invariants.Violation] = []
    error: str | None = None
    try:
        for number in range(schedule.passes):
            _, found = _one_pass(world, checker, number, fault=True, run_pass=run_pass, extra=extra)
            violations += found
        drained = False
        last: worldmod.PassRecord | None = None
        for d in range(invariants.DRAIN_PASSES):
            last, found = _one_pass(
                world, checker, schedule.passes + d, fault=False, run_pass=run_pass, extra=extra
            )
            violations += found
            if last.exit_code == exitcodes.AUTH and world.portal_login():
                world.run_operator("auth_reset", schedule.accounts[0], 0)
            if last.exit_code == exitcodes.OK and checker.drained():
                drained = True
                break
        assert last is not None  # DRAIN_PASSES >= 1
        violations += checker.final(drained, last)
        platform_lost = checker.platform_lost()
        acknowledged = sum(world.acknowledged().values())
    except Exception:
        error = traceback.format_exc(limit=8)
        platform_lost = acknowledged = 0
    finally:
        world.close()
    return result(
        schedule.as_json(),
        world,
        started,
        violations=violations,
        acknowledged=acknowledged,
        platform_lost=platform_lost,
        error=error,
    )


def _one_pass(
    world: worldmod.World,
    checker: invariants.Checker,
    number: int,
    *,
    fault: bool,
    run_pass: Any,
    extra: dict[str, str],
) -> tuple[worldmod.PassRecord, list[invariants.Violation]]:
    before = world.quarantine_seen()
    world.begin_pass(number, fault=fault)
    try:
        outcome: inproc.Outcome = run_pass(world, world.env(number if fault else None, **extra))
    finally:
        world.end_pass()
    record = worldmod.PassRecord(
        number=number,
        phase="fault" if fault else "drain",
        exit_code=outcome.exit_code,
        failed=outcome.failed,
        quarantined_before=before,
        quarantined_after=world.quarantine_seen(),
    )
    world.records.append(record)
    return record, checker.after_pass(record)
