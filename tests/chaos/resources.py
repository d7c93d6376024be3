"""I5: what a long-lived worker process holds (memory, open files, threads, database connections),
sampled from ``/proc``, and the verdict whether it stays flat after warm-up.

A sample of one process (``sample``): resident memory (``VmRSS`` in ``/proc/PID/status``), threads
(``Threads``), open file descriptors (the entries of ``/proc/PID/fd``), and its database connections:
the established TCP sockets the process itself owns whose far end is the port its connections go to
(the process's own proxy in the soak), counted from ``/proc/PID/net/tcp*`` and its descriptors, so
the figure is what the kernel says the process holds, not what its pool believes.

Flat (``judge``), per process and figure, over the samples of one process's life:

* warm-up: the first half of the run (by time) is warm-up; the second half is the window judged;
* slope: the least-squares slope over the window, as growth per hour, at most ``SLOPE_PER_HOUR``
  (RSS: 8 MiB/h; open files, threads, connections: 2/h), so a leak of one descriptor every half
  hour still fails;
* bound: the window's maximum at most the warm-up's maximum plus ``HEADROOM`` (RSS: +10 % of
  the warm-up's maximum, at least 4 MiB; open files +4; threads +2; connections +1), so a
  process that keeps setting new highs fails even when its slope is small.

A window shorter than ``MIN_WINDOW_SECONDS`` or of fewer than ``MIN_SAMPLES`` samples cannot show
either and is reported as not judged (a failure of I5: a long run must be long enough).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

FIGURES: Final = ("rss_mib", "open_files", "threads", "db_connections")
SLOPE_PER_HOUR: Final = {"rss_mib": 8.0, "open_files": 2.0, "threads": 2.0, "db_connections": 2.0}
MIN_WINDOW_SECONDS: Final = 120.0
MIN_SAMPLES: Final = 10
_ESTABLISHED: Final = "01"


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One process's figures at ``t`` seconds into the run."""

    t: float
    role: str  # "daemon", "receiver", ...
    pid: int
    rss_mib: float
    open_files: int
    threads: int
    db_connections: int

    def value(self, figure: str) -> float:
        return float(getattr(self, figure))


def headroom(figure: str, warm_max: float) -> float:
    """How far above the warm-up's maximum the window may go (see the module doc)."""
    if figure == "rss_mib":
        return max(4.0, 0.10 * warm_max)
    return {"open_files": 4.0, "threads": 2.0, "db_connections": 1.0}[figure]


def sample(pid: int, role: str, t: float, db_port: int | None) -> Sample | None:
    """The figures of process ``pid`` now (None when it is gone)."""
    proc = Path("/proc") / str(pid)
    try:
        status = (proc / "status").read_text(encoding="ascii", errors="replace")
        fds = os.listdir(proc / "fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie: exited, not yet reaped
        return None
    rss_kib = int(fields["VmRSS"].split()[0])
    threads = int(fields.get("Threads", "0").strip() or 0)
    return Sample(
        t=round(t, 1),
        role=role,
        pid=pid,
        rss_mib=round(rss_kib / 1024, 2),
        open_files=len(fds),
        threads=threads,
        db_connections=0 if db_port is None else connections_to(pid, db_port),
    )


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections process ``pid`` holds to local port ``port`` (its database proxy)."""
    proc = Path("/proc") / str(pid)
    to_port: set[str] = set()  # socket inodes whose far end is the port
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text(encoding="ascii").splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == _ESTABLISHED and int(cols[2].rsplit(":", 1)[1], 16) == port:
                    to_port.add(cols[9])
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(proc / "fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(proc / "fd" / fd)
                if target.startswith("socket:[") and target[8:-1] in to_port:
                    count += 1
    return count


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """I5 for one figure of one process."""

    role: str
    figure: str
    judged: bool
    flat: bool
    warm_max: float
    window_max: float
    window_last: float
    slope_per_hour: float
    window_seconds: float
    samples: int

    def line(self) -> str:
        if not self.judged:
            return (
                f"{self.role} {self.figure}: not judged ({self.samples} samples over "
                f"{self.window_seconds:.0f} s after warm-up; needs {MIN_SAMPLES} over "
                f"{MIN_WINDOW_SECONDS:.0f} s)"
            )
        return (
            f"{self.role} {self.figure}: {'flat' if self.flat else 'NOT FLAT'} (slope "
            f"{self.slope_per_hour:+.2f}/h, limit {SLOPE_PER_HOUR[self.figure]:.0f}/h; max after warm-up "
            f"{self.window_max:g}, warm-up max {self.warm_max:g} + {headroom(self.figure, self.warm_max):g})"
        )


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``(t, value)`` points (value per unit of t; 0 for fewer than 2)."""
    n = len(points)
    if n < 2:  # a line needs two points
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def judge(samples: Sequence[Sample], role: str, start: float, end: float) -> list[Verdict]:
    """I5 for ``role``'s samples of a run from ``start`` to ``end`` seconds: one verdict per figure.

    Only the last process of the role counts (a restarted one starts again from nothing); the
    harness restarts processes in the first half only, so that process lives the whole window.
    """
    mine = [s for s in samples if s.role == role]
    if mine:
        last_pid = mine[-1].pid
        mine = [s for s in mine if s.pid == last_pid]
    half = start + (end - start) / 2
    warm = [s for s in mine if s.t < half]
    window = [s for s in mine if s.t >= half]
    span = (window[-1].t - window[0].t) if window else 0.0
    out: list[Verdict] = []
    for figure in FIGURES:
        values = [s.value(figure) for s in window]
        judged = len(window) >= MIN_SAMPLES and span >= MIN_WINDOW_SECONDS and bool(warm)
        warm_max = max((s.value(figure) for s in warm), default=0.0)
        per_hour = slope([(s.t, s.value(figure)) for s in window]) * 3600
        window_max = max(values, default=0.0)
        flat = (
            judged
            and per_hour <= SLOPE_PER_HOUR[figure]
            and window_max <= warm_max + headroom(figure, warm_max)
        )
        out.append(
            Verdict(
                role=role,
                figure=figure,
                judged=judged,
                flat=flat,
                warm_max=round(warm_max, 2),
                window_max=round(window_max, 2),
                window_last=round(values[-1], 2) if values else 0.0,
                slope_per_hour=round(per_hour, 3),
                window_seconds=round(span, 1),
                samples=len(window),
            )
        )
    return out


CSV_HEADER: Final = "t_seconds,role,pid,rss_mib,open_files,threads,db_connections"


def csv_line(s: Sample) -> str:
    return f"{s.t},{s.role},{s.pid},{s.rss_mib},{s.open_files},{s.threads},{s.db_connections}"


def markdown(verdicts: Sequence[Verdict], samples: Sequence[Sample]) -> str:
    """The I5 table: per process and figure, at the start, end of warm-up, end, slope and verdict."""
    rows = [
        "| process | figure | first sample | warm-up max | max after warm-up | last | slope (per hour) "
        "| I5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        first = next((s.value(v.figure) for s in samples if s.role == v.role), 0.0)
        verdict = "flat" if v.flat else ("not judged" if not v.judged else "**NOT FLAT**")
        rows.append(
            f"| {v.role} | {v.figure} | {first:g} | {v.warm_max:g} | {v.window_max:g} | {v.window_last:g} | "
            f"{v.slope_per_hour:+.2f} (limit {SLOPE_PER_HOUR[v.figure]:g}) | {verdict} |"
        )
    return "\n".join(rows)


def chart(samples: Sequence[Sample], path: Path, title: str) -> bool:
    """A PNG of the four figures over time, one line per process (False: matplotlib is not installed,
    ``make chaos SOAK=...`` installs it with the bench extra)."""
    try:
        import matplotlib  # noqa: PLC0415  # optional (bench extra), only for the chart

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415  # after choosing the headless backend
    except ImportError:
        return False
    labels = {
        "rss_mib": "resident memory (MiB)",
        "open_files": "open files",
        "threads": "threads",
        "db_connections": "database connections",
    }
    fig, axes = pyplot.subplots(4, 1, figsize=(9, 10), sharex=True)
    roles = sorted({s.role for s in samples})
    for ax, figure in zip(axes, FIGURES, strict=True):
        for n, role in enumerate(roles):
            # One line per process: a restarted one starts a new line (no line across the gap).
            for i, pid in enumerate(dict.fromkeys(s.pid for s in samples if s.role == role)):
                mine = [s for s in samples if s.role == role and s.pid == pid]
                ax.plot(
                    [s.t / 60 for s in mine],
                    [s.value(figure) for s in mine],
                    color=f"C{n}",
                    label=role if i == 0 else None,
                    linewidth=1,
                )
        ax.set_ylabel(labels[figure])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[0].set_title(title)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot.close(fig)
    return True
