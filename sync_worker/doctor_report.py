"""``sync-worker doctor``'s report: one verdict per check (``Check``), the exit code they decide,
and the report as a table or JSON (``Report``)."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Final, Literal

from sync_worker import exitcodes, head_summary, report

Verdict = Literal["ok", "warn", "fail", "skipped"]
# The order in which a failing check decides the exit code: the most basic cause first (a
# database that cannot be reached also makes the login fail; the code names the database).
_EXIT_PRECEDENCE: Final = (exitcodes.CONFIG, exitcodes.DATABASE, exitcodes.AUTH, exitcodes.FAILED)


@dataclasses.dataclass
class Check:
    """One check's verdict. ``code`` is the exit code it stands for when it fails."""

    name: str
    verdict: Verdict
    summary: str
    account: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    code: int = exitcodes.FAILED

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, "verdict": self.verdict, "summary": self.summary}
        if self.account is not None:
            shown["account"] = self.account
        shown["detail"] = report.jsonable(self.detail)
        return shown


@dataclasses.dataclass
class Report:
    checks: list[Check] = dataclasses.field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    @property
    def exit_code(self) -> int:
        failed = {c.code for c in self.checks if c.verdict == "fail"}
        return next((code for code in _EXIT_PRECEDENCE if code in failed), exitcodes.OK)

    def as_dict(self) -> dict[str, Any]:
        counts = collections.Counter(c.verdict for c in self.checks)
        return {
            "ok": self.exit_code == exitcodes.OK,
            "exit_code": self.exit_code,
            "verdicts": {v: counts.get(v, 0) for v in ("ok", "warn", "fail", "skipped")},
            "checks": [c.as_dict() for c in self.checks],
        }

    def failure(self) -> str:
        """One line naming the failed checks, the one deciding the exit code first."""
        failed = sorted(
            (c for c in self.checks if c.verdict == "fail"),
            key=lambda c: (
                _EXIT_PRECEDENCE.index(c.code) if c.code in _EXIT_PRECEDENCE else len(_EXIT_PRECEDENCE)
            ),
        )
        named = "; ".join(
            f"{c.name}{'' if c.account is None else ' ' + c.account}: {c.summary}" for c in failed
        )
        return f"doctor: {len(failed)} check(s) failed: {named}"

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def table(self) -> str:
        """The checks as a table, then each head block's summary, then a closing line."""
        rows_ = [
            {
                "check": c.name if c.account is None else f"{c.name} {c.account}",
                "verdict": c.verdict.upper() if c.verdict == "fail" else c.verdict,
                "summary": c.summary,
            }
            for c in self.checks
        ]
        width = max(len(r["check"]) for r in rows_)
        lines = [f"{'check'.ljust(width)}  verdict  summary"]
        lines += [f"{r['check'].ljust(width)}  {r['verdict'].ljust(7)}  {r['summary']}" for r in rows_]
        for c in self.checks:
            if c.name == "head_block" and c.detail.get("block"):
                lines.append("")
                lines.append(f"head block of {c.account}:")
                lines += [f"  {line}" for line in head_summary.describe_block(c.detail["block"])]
        counts = self.as_dict()["verdicts"]
        lines.append("")
        tally = f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} failed"
        lines.append(f"{tally}, {counts['skipped']} skipped; exit {self.exit_code}")
        return "\n".join(lines)


# --- the checks, in order ---------------------------------------------------------
