"""What a soak reports (module ``soak``): its figures and verdicts (``SoakResult``) and its outputs in
``out_dir``: ``soak-resources.csv`` (every sample), ``soak-summary.md`` (the figures and verdicts) and
``soak-resources.png`` (the chart, with matplotlib from the bench extra).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Final

from tests.chaos import resources

# How long the soak waits, once the faults stop, for every callback to settle and every queued message
# to be stored (I3); here because the report names it when the drain did not finish.
DRAIN_SECONDS: Final = 240.0


@dataclasses.dataclass
class SoakResult:
    """What a soak did, the figures and the verdicts."""

    seconds: float
    injected: int
    polled: int  # messages the platform counts as acknowledged (polled)
    pushed: int  # callbacks answered 2xx (a duplicate counted again)
    pushed_distinct: int
    stored: int
    faults: collections.Counter[str]
    receiver_restarts: int
    push_counters: dict[str, int]
    violations: list[str]
    platform_lost: int
    both_ways: int  # timestamp-less messages stored pushed and polled: two rows by design (docs/schema.md)
    drain_seconds: float | None
    peak_failed_logins: int
    daemon_exit: int | None
    samples: list[resources.Sample]
    verdicts: list[resources.Verdict]
    loadavg: tuple[str, str]  # at the start, at the end
    files: list[str] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations) or not all(v.flat for v in self.verdicts)

    def lines(self) -> list[str]:
        out = [
            f"{self.seconds / 60:.1f} min; {self.injected} messages injected, {self.polled} polled "
            f"(acknowledged), {self.pushed} callbacks answered 2xx "
            f"({self.pushed_distinct} distinct messages), "
            f"{self.stored} rows in sms_history; {sum(self.faults.values())} faults "
            f"({', '.join(f'{k} {n}' for k, n in sorted(self.faults.items()))}); receiver restarted "
            f"{self.receiver_restarts} times; push: {self.push_counters}",
            f"drained in {self.drain_seconds:.0f} s after the faults stopped"
            if self.drain_seconds is not None
            else f"NOT drained within {DRAIN_SECONDS:.0f} s",
            f"peak failed logins in a row: {self.peak_failed_logins}; daemon exit on SIGTERM: "
            f"{self.daemon_exit}; {self.platform_lost} lost by the platform's final-block rule; "
            f"{self.both_ways} timestamp-less message(s) arrived both ways, two rows each by design "
            "(docs/schema.md, Pushed messages); "
            f"load average {self.loadavg[0]} at the start, {self.loadavg[1]} at the end",
        ]
        out += [f"VIOLATION {v}" for v in self.violations]
        out += [v.line() for v in self.verdicts]
        return out


def write_outputs(result: SoakResult, out_dir: Path, label: str) -> list[str]:
    """``<label>-resources.csv``, ``<label>-summary.md`` and ``<label>-resources.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{label}-resources.csv"
    csv.write_text(
        "\n".join([resources.CSV_HEADER, *(resources.csv_line(s) for s in result.samples)]) + "\n",
        encoding="utf-8",
    )
    png = out_dir / f"{label}-resources.png"
    charted = resources.chart(
        result.samples,
        png,
        f"{label}: sync-worker run + receive, {result.seconds / 60:.0f} min under a slow fault schedule",
    )
    md = out_dir / f"{label}-summary.md"
    md.write_text(
        "\n".join(
            [
                f"# {label}",
                "",
                *(f"* {line}" for line in result.lines()),
                "",
                resources.markdown(result.verdicts, result.samples),
                "",
                _minute_table(result.samples),
                "",
            ]
        ),
        encoding="utf-8",
    )
    return [str(csv), str(md)] + ([str(png)] if charted else [])


def _minute_table(samples: list[resources.Sample], rows: int = 7) -> str:
    """The figures of each process at ``rows`` moments spread over the run (first sample at or after)."""
    if not samples:
        return "(no samples)"
    end = samples[-1].t
    lines = [
        "| minute | daemon RSS MiB | daemon files | daemon threads | daemon DB conns | receiver RSS MiB | "
        "receiver files | receiver threads | receiver DB conns |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(rows):
        at = end * i / (rows - 1)
        cells = [f"{at / 60:.1f}"]
        for role in ("daemon", "receiver"):
            s = next((x for x in samples if x.role == role and x.t >= at), None)
            if s is None:
                s = next((x for x in reversed(samples) if x.role == role), None)
            cells += (
                ["-"] * 4
                if s is None
                else [f"{s.rss_mib:g}", str(s.open_files), str(s.threads), str(s.db_connections)]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
