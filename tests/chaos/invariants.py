"""The promises a schedule must not break, checked after every pass and at the end.

* I1: every message the platform counts as acknowledged is in ``sms_history`` exactly once, or its
  bytes are kept in ``sms_quarantine`` (and I4 saw it reported). A message stored and later removed
  (by retention, within the run: stored minutes ago) breaks it too.
* I2: the vendor's consecutive failed logins for the user (the simulator counts per case-folded
  user name, as the vendor) never reach 5. The simulator keeps the peak, so "at every moment" holds.
* I3: once faults stop, every queue drains within ``DRAIN_PASSES`` passes: the last exits 0 and
  everything still queued is stored.
* I4: no false success: a pass that exits 0 quarantined nothing and lost nothing.

The one loss no client can prevent is left out of I1 and I4, and counted apart: a final block the
platform dequeued on delivery (or on the next head GET) to a pass that then died or failed that
account before committing it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
from typing import Any, Final

from sync_worker import auth
from tests.chaos import world as worldmod

LOCKOUT: Final = auth.VENDOR_LOCKOUT_AT
_EXAMPLES: Final = 3


@dataclasses.dataclass(frozen=True)
class Violation:
    code: str  # I1-lost, I1-removed, I1-doubled, I2, I3, I4-lost, I4-quarantined
    pass_no: int | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"invariant": self.code, "pass": self.pass_no, "detail": self.detail}

    def line(self) -> str:
        where = "" if self.pass_no is None else f" (pass {self.pass_no})"
        return f"{self.code}{where}: {self.detail}"


class Checker:
    """Per-pass checks (I2, I4, removals) and the final ones (I1, I3) of one world."""

    def __init__(self, world: worldmod.World) -> None:
        self.world = world
        self.missing_before: set[worldmod.Key] = set()
        self.stored_ever: set[worldmod.Key] = set()
        self.locked_reported = False
        self.removed_reported: set[worldmod.Key] = set()

    def _missing(self) -> tuple[set[worldmod.Key], dict[worldmod.Key, int]]:
        w = self.world
        acked, stored, kept = w.acknowledged(), w.stored(), w.quarantined()
        missing = {k for k in acked if stored[k] == 0 and not worldmod.in_quarantine(k, kept)}
        return missing, dict(stored)

    def after_pass(self, record: worldmod.PassRecord) -> list[Violation]:
        out: list[Violation] = []
        peak = self.world.sim.peak_failed_login_streak()
        if peak >= LOCKOUT and not self.locked_reported:
            self.locked_reported = True
            out.append(
                Violation(
                    "I2",
                    record.number,
                    f"the vendor's count of failed logins in a row for the user reached {peak} "
                    f"(the user is locked at {LOCKOUT})",
                )
            )
        missing, stored = self._missing()
        new = missing - self.missing_before - self.removed_reported
        by_operator = {k: why for k, why in self.world.removed.items() if k not in self.removed_reported}
        removed = (new & self.stored_ever) | set(by_operator)
        if removed:
            causes = sorted(set(by_operator.values())) or ["not by an operator command"]
            out.append(
                Violation(
                    "I1-removed",
                    record.number,
                    f"{len(removed)} message(s) stored minutes ago were removed "
                    f"({'; '.join(causes)}): {_examples(removed)}",
                )
            )
            self.removed_reported |= removed
        if record.exit_code == 0:
            if record.quarantined_after > record.quarantined_before:
                out.append(
                    Violation(
                        "I4-quarantined",
                        record.number,
                        f"exit 0, but {record.quarantined_after - record.quarantined_before} block(s) "
                        "were quarantined in this pass",
                    )
                )
            lost = new - removed - self.world.at_risk()
            if lost:
                out.append(
                    Violation(
                        "I4-lost",
                        record.number,
                        f"exit 0, but {len(lost)} message(s) acknowledged in this pass are neither "
                        f"stored nor quarantined: {_examples(lost)}",
                    )
                )
        self.missing_before = missing
        self.stored_ever |= set(stored)
        return out

    def drained(self) -> bool:
        stored = self.world.stored()
        return all(stored[k] > 0 for k in self.world.queued())

    def final(self, drained: bool, last: worldmod.PassRecord) -> list[Violation]:
        out: list[Violation] = []
        missing, stored = self._missing()
        doubled = {k for k, n in stored.items() if n > 1}
        if doubled:
            out.append(
                Violation(
                    "I1-doubled",
                    None,
                    f"{len(doubled)} message(s) stored more than once: {_examples(doubled)}",
                )
            )
        lost = missing - self.world.at_risk() - self.removed_reported
        if lost:
            out.append(
                Violation(
                    "I1-lost",
                    None,
                    f"{len(lost)} message(s) the platform counts as acknowledged are neither in sms_history "
                    f"nor kept in sms_quarantine: {_examples(lost)}",
                )
            )
        if not drained:
            waiting = sum(1 for k in self.world.queued() if k not in stored)
            out.append(
                Violation(
                    "I3",
                    last.number,
                    f"not drained after {DRAIN_PASSES} passes without faults: last exit {last.exit_code}, "
                    f"{waiting} queued message(s) not stored",
                )
            )
        return out

    def platform_lost(self) -> int:
        missing, _ = self._missing()
        return len(missing & self.world.at_risk())


DRAIN_PASSES: Final = 4


def _examples(keys: set[worldmod.Key]) -> str:
    shown = sorted(keys)[:_EXAMPLES]
    return ", ".join(repr(text) for _, text in shown) + (" ..." if len(keys) > _EXAMPLES else "")


def untimed_sources(rows: list[tuple[Any, ...]]) -> dict[worldmod.Key, list[str]]:
    """The ``source`` of each stored row of a message without a timestamp, by message
    (``(account, raw_json, source)`` rows)."""
    out: dict[worldmod.Key, list[str]] = collections.defaultdict(list)
    for account, raw, source in rows:
        with contextlib.suppress(ValueError, AttributeError):
            obj = json.loads(raw)
            if obj.get("timestamp") is None:
                out[(str(account), str(obj.get("message")))].append(str(source))
    return out


def split_doubles(
    stored: collections.Counter[worldmod.Key], untimed: dict[worldmod.Key, list[str]]
) -> tuple[set[worldmod.Key], set[worldmod.Key]]:
    """(stored more than once: broken I1; stored twice by design: a message without a timestamp that
    arrived both ways, one row pushed and one polled, which docs/schema.md "Pushed messages" says
    cannot be matched: its callback's 2xx was lost, or it went back to the queue after an attempt
    that had stored it)."""
    doubled = {k for k, n in stored.items() if n > 1}
    both_ways = {k for k in doubled if sorted(untimed.get(k, ())) == ["poll", "push"]}
    return doubled - both_ways, both_ways
