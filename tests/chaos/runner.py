"""``python -m tests.chaos``: run seeded schedules, report broken promises, replay and shrink failures.

Modes:

* CI (the default): ``--schedules 200`` seeds from ``--first-seed 1``; every tenth seed runs as real
  ``once`` processes and every tenth drives the daemon (``schedule.mode_of``: ``daemon``), so 20 of
  each in the 200; after every tenth seed, one push-mode schedule (``push``).
* long: ``--minutes N``: seeds one after another until N minutes are up, and beside them one
  long-lived daemon and receiver (``long``) for I5.
* soak: ``--soak N``: only the daemon and the receiver, N minutes under a slow schedule (``soak``):
  resource figures as CSV, a markdown summary and a PNG chart in ``--soak-out``.
* replay: ``--seed S`` (the schedule of S, regenerated) or ``--schedule FILE_OR_JSON`` (a printed or
  shrunk schedule), with what happened pass by pass.

One embedded Postgres serves the whole run (``pg``); ``--jobs`` processes run schedules side by
side. For each invariant that fails, the first failing seed is shrunk (``shrink``) within
``--shrink-seconds``, and its shrunk schedule is printed and written next to ``--out``. Exit 0 when
every schedule kept every promise, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tests.chaos import daemon, execute, inproc, long, pg, push, shrink, soak
from tests.chaos import schedule as sched
from tests.chaos import seeds as seeded

_dbs: pg.Databases | None = None
AnySchedule = sched.Schedule | push.PushSchedule
# What a replay command must repeat of this run's options (``--pgbouncer MODE``).
_replay_options = ""
PYTHON = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable


def _init(admin_url: str, template: str, verbose: bool, pooler_port: int | None = None) -> None:
    """Set up a process that runs schedules: the crash-point wrappers, logging, its databases."""
    global _dbs  # noqa: PLW0603  # one set of databases per process
    inproc.install()
    inproc.configure_logs(sys.stderr if verbose else None)
    _dbs = pg.Databases(admin_url, template, pooler_port=pooler_port)
    # A pool's worker process ends through multiprocessing's exit path, which runs its finalizers
    # (not atexit): the database made ahead and the drops still running are cleaned up there.
    multiprocessing.util.Finalize(None, _done, exitpriority=10)


def _run(schedule_json: dict[str, Any]) -> execute.Result:
    assert _dbs is not None  # _init ran
    schedule = _from_json(schedule_json)
    if isinstance(schedule, push.PushSchedule):
        return push.run(schedule, _dbs)
    if schedule.mode in sched.DAEMON_MODES:
        return daemon.run(schedule, _dbs)
    return execute.run(schedule, _dbs)


def _from_json(obj: dict[str, Any]) -> AnySchedule:
    return push.PushSchedule.from_json(obj) if obj.get("mode") == "push" else sched.Schedule.from_json(obj)


def _replay_command(seed: int, mode: str) -> str:
    flag = "--push-seed" if mode == "push" else "--seed"
    return f"{PYTHON} -m tests.chaos {flag} {seed}{_replay_options}"


def _done() -> None:
    global _dbs  # noqa: PLW0603  # closed once
    if _dbs is not None:
        _dbs.close()
        _dbs = None


class Pool:
    """Schedules run in ``jobs`` worker processes (or in this one when ``jobs`` is 1)."""

    def __init__(
        self, admin_url: str, template: str, jobs: int, verbose: bool, pooler_port: int | None = None
    ) -> None:
        self.jobs = jobs
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if jobs > 1:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(admin_url, template, verbose, pooler_port),
            )
        else:
            _init(admin_url, template, verbose, pooler_port)

    def submit(self, schedule: AnySchedule) -> concurrent.futures.Future[execute.Result]:
        if self._executor is not None:
            return self._executor.submit(_run, schedule.as_json())
        future: concurrent.futures.Future[execute.Result] = concurrent.futures.Future()
        future.set_result(_run(schedule.as_json()))
        return future

    def run(self, schedule: AnySchedule) -> execute.Result:
        return self.submit(schedule).result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        else:
            _done()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Seeded fault schedules against the real worker; invariants I1-I5 (docs/testing.md).",
    )
    p.add_argument("--schedules", type=int, default=200, help="CI mode: this many seeds (default 200)")
    p.add_argument("--minutes", type=float, help="long mode: new seeds until this many minutes are up")
    p.add_argument("--soak", type=float, help="soak mode: daemon + receiver for this many minutes")
    p.add_argument(
        "--soak-out",
        type=Path,
        default=Path("docs/images"),
        help="soak mode: where its CSV, summary and chart go",
    )
    p.add_argument("--soak-seed", type=int, default=1, help="soak mode: the seed of its slow schedule")
    p.add_argument("--sample-seconds", type=float, default=10.0, help="soak mode: seconds between samples")
    p.add_argument("--first-seed", type=int, default=1, help="the first seed of a CI or long run (default 1)")
    p.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    p.add_argument(
        "--push-schedules",
        type=int,
        default=20,
        help="push-mode schedules (module push), one after every tenth seed: CI mode's share (default 20)",
    )
    p.add_argument("--push-seed", type=int, action="append", help="replay this push-mode seed (repeatable)")
    p.add_argument("--schedule", help="replay this schedule: a JSON file or a JSON string")
    p.add_argument("--jobs", type=int, default=2, help="schedules run side by side (default 2)")
    p.add_argument("--shrink-seconds", type=float, default=60.0, help="time to shrink each failure (0: off)")
    p.add_argument("--shrink-max", type=int, default=4, help="failing seeds shrunk per run (default 4)")
    p.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "chaos", help="where shrunk schedules go"
    )
    p.add_argument("--report", type=Path, help="also write every schedule's result as JSON lines here")
    p.add_argument("--verbose", action="store_true", help="the in-process worker's logs to stderr")
    p.add_argument(
        "--pgbouncer",
        choices=("session", "transaction", "statement"),
        help="put a PgBouncer in this pooling mode between the worker (and operators) and the server",
    )
    return p


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    global _replay_options  # noqa: PLW0603  # set once per run, read by the printers
    args = build_parser().parse_args(argv)
    # A SIGTERM (a timeout, an operator) unwinds like Ctrl-C: the daemon and receiver of a long or
    # soak run, the run's PgBouncer and its embedded server are stopped by their ``finally`` blocks.
    signal.signal(signal.SIGTERM, _terminated)
    _replay_options = f" --pgbouncer {args.pgbouncer}" if args.pgbouncer else ""
    replay = _replays(args)
    started = time.monotonic()
    with pg.server() as admin_url, pg.pooler(admin_url, args.pgbouncer) as pooler_port:
        template = pg.make_template(admin_url)
        if args.soak is not None:
            try:
                return _soak(admin_url, template, args, out)
            finally:
                pg.drop_template(admin_url, template)
        jobs = 1 if replay is not None else max(1, args.jobs)
        pool = Pool(admin_url, template, jobs, args.verbose, pooler_port)
        try:
            if replay is not None:
                return _replay(pool, replay, out)
            beside = _beside(admin_url, template, args, out)
            results = _campaign(pool, args, started, out)
            code = _report(pool, results, args, started, out)
            if beside is not None and not beside.finish():
                code = 1
            return code
        finally:
            pool.close()
            pg.drop_template(admin_url, template)


def _say(out: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say


def _soak(admin_url: str, template: str, args: argparse.Namespace, out: TextIO) -> int:
    config = soak.SoakConfig(
        minutes=args.soak, seed=args.soak_seed, sample_seconds=args.sample_seconds, out_dir=args.soak_out
    )
    result = soak.run(admin_url, template, config, _say(out))
    return 1 if result.failed else 0


def _beside(admin_url: str, template: str, args: argparse.Namespace, out: TextIO) -> long.Beside | None:
    """Long mode: the daemon and receiver that run beside the schedules for I5 (``long``)."""
    if args.minutes is None:
        return None
    beside = long.Beside(admin_url, template, args.minutes, args.out, _say(out))
    beside.start()
    return beside


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _replays(args: argparse.Namespace) -> list[AnySchedule] | None:
    if args.schedule:
        text = args.schedule if args.schedule.lstrip().startswith("{") else Path(args.schedule).read_text()
        return [_from_json(json.loads(text))]
    if args.seed or args.push_seed:
        out: list[AnySchedule] = [seeded.generate(s) for s in args.seed or ()]
        return out + [push.generate(s) for s in args.push_seed or ()]
    return None


def _replay(pool: Pool, schedules: list[AnySchedule], out: TextIO) -> int:
    failed = False
    for schedule in schedules:
        result = pool.run(schedule)
        print(f"schedule {schedule.dumps()}", file=out)
        for note in result.notes:
            print(f"  event  {note}", file=out)
        for p in result.passes:
            print(
                f"  pass   {p['number']} ({p['phase']}): exit {p['exit_code']}, failed {list(p['failed'])}",
                file=out,
            )
        _print_result(result, out)
        failed = failed or result.failed
    return 1 if failed else 0


def _seeds(args: argparse.Namespace, started: float) -> Iterator[int]:
    seed = args.first_seed
    while True:
        if args.minutes is None and seed >= args.first_seed + args.schedules:
            return
        if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
            return
        yield seed
        seed += 1


def _schedules(args: argparse.Namespace, started: float) -> Iterator[AnySchedule]:
    """The run's seeds, and after every tenth one a push-mode schedule (``--push-schedules`` of them in
    CI mode; without end in long mode)."""
    pushed = 0
    for n, seed in enumerate(_seeds(args, started), start=1):
        yield seeded.generate(seed)
        if n % 10 == 0 and (args.minutes is not None or pushed < args.push_schedules):
            pushed += 1
            yield push.generate(pushed)


def _campaign(pool: Pool, args: argparse.Namespace, started: float, out: TextIO) -> list[execute.Result]:
    results: list[execute.Result] = []
    running: set[concurrent.futures.Future[execute.Result]] = set()
    schedules = _schedules(args, started)
    report = args.report.open("a", encoding="utf-8") if args.report else None
    try:
        exhausted = False
        while running or not exhausted:
            while not exhausted and len(running) < pool.jobs * 2:
                schedule = next(schedules, None)
                if schedule is None:
                    exhausted = True
                    break
                running.add(pool.submit(schedule))
            if not running:
                break
            done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results.append(result)
                if report is not None:
                    report.write(json.dumps(_summary(result)) + "\n")
                if result.failed:
                    _print_result(result, out)
                if len(results) % 25 == 0:
                    print(
                        f"chaos: {len(results)} schedules, {time.monotonic() - started:.0f} s",
                        file=out,
                        flush=True,
                    )
    finally:
        if report is not None:
            report.close()
    return results


def _report(
    pool: Pool, results: list[execute.Result], args: argparse.Namespace, started: float, out: TextIO
) -> int:
    ran = time.monotonic() - started
    processes = sum(1 for r in results if r.schedule["mode"] in ("process", "daemon"))
    daemons = sum(1 for r in results if r.schedule["mode"] in sched.DAEMON_MODES)
    pushes = sum(1 for r in results if r.schedule["mode"] == "push")
    failing = sorted((r for r in results if r.failed), key=lambda r: (r.schedule["mode"] == "push", r.seed))
    print(
        f"chaos: {len(results)} schedules ({len(results) - processes - pushes} in-process, {processes} "
        f"with real processes, {pushes} push mode; {daemons} driving the daemon) in {ran:.0f} s; "
        f"{len(failing)} failing; "
        f"{sum(r.injected for r in results)} messages, "
        f"{sum(r.acknowledged for r in results)} acknowledged, {sum(r.platform_lost for r in results)} lost "
        "by the platform's final-block rule (not a promise: docs/testing.md)",
        file=out,
    )
    by_code: dict[str, list[execute.Result]] = {}
    for r in failing:
        for code in sorted(r.codes()):
            by_code.setdefault(code, []).append(r)
    for code, found in sorted(by_code.items()):
        shown = ", ".join(_name(r) for r in found[:12]) + (" ..." if len(found) > 12 else "")
        print(f"  {code}: {len(found)} schedule(s), seeds {shown}", file=out)
    shrunk: list[tuple[str, str, set[str]]] = []  # (seed, file, codes its shrunk schedule breaks)
    for code, found in sorted(by_code.items()):
        if len(shrunk) >= args.shrink_max or args.shrink_seconds <= 0 or code == "error":
            continue
        first = found[0]
        earlier = next((path for name, path, codes in shrunk if name == _name(first) and code in codes), None)
        if earlier is not None:
            print(
                f"{code} seed {_name(first)}: the shrunk schedule above ({earlier}) breaks it too", file=out
            )
            continue
        shrunk.append((_name(first), *_shrink_and_print(pool, first, code, args, out)))
    return 1 if failing else 0


def _shrink_and_print(
    pool: Pool, result: execute.Result, code: str, args: argparse.Namespace, out: TextIO
) -> tuple[str, set[str]]:
    original = _from_json(result.schedule)

    def fails(candidate: AnySchedule) -> bool:
        return code in pool.run(candidate).codes()

    outcome: shrink.Shrunk[AnySchedule] = shrink.shrink(original, fails, seconds=args.shrink_seconds)
    # Once more, to show it fails again on its own and which promises it breaks.
    again = pool.run(outcome.schedule)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"seed-{_name(result)}-{code}.json"
    path.write_text(outcome.schedule.dumps() + "\n", encoding="utf-8")
    print(
        f"{code} seed {_name(result)}: shrunk from {len(original.events)} event(s) in {original.passes} "
        f"fault pass(es) to {len(outcome.schedule.events)} in {outcome.schedule.passes} "
        f"({outcome.runs} runs, "
        f"{outcome.seconds:.0f} s{', time up' if outcome.timed_out else ''}); run again it breaks "
        f"{', '.join(sorted(again.codes())) or 'nothing (flaky)'}:",
        file=out,
    )
    for v in again.violations:
        print(f"    {v.line()}", file=out)
    print(f"  {outcome.schedule.dumps()}", file=out)
    print(f"  replay the seed:       {_replay_command(original.seed, original.mode)}", file=out)
    print(f"  replay the shrunk one: {PYTHON} -m tests.chaos --schedule {path}{_replay_options}", file=out)
    return str(path), again.codes()


def _print_result(result: execute.Result, out: TextIO) -> None:
    mode = result.schedule["mode"]
    if not result.failed:
        print(f"ok   seed {_name(result)} ({mode}, {result.seconds:.1f} s): every promise kept", file=out)
        return
    print(f"FAIL seed {_name(result)} ({mode}, {result.seconds:.1f} s)", file=out)
    for v in result.violations:
        print(f"  {v.line()}", file=out)
    if result.error is not None:
        print("  harness error:\n    " + result.error.strip().replace("\n", "\n    "), file=out)
    print(f"  replay: {_replay_command(result.seed, mode)}", file=out, flush=True)


def _name(result: execute.Result) -> str:
    """A schedule's seed as the report names it: ``push-S`` for a push-mode one."""
    return f"push-{result.seed}" if result.schedule["mode"] == "push" else str(result.seed)


def _summary(result: execute.Result) -> dict[str, Any]:
    return {
        "seed": result.seed,
        "mode": result.schedule["mode"],
        "seconds": result.seconds,
        "violations": [v.as_json() for v in result.violations],
        "error": result.error,
        "injected": result.injected,
        "acknowledged": result.acknowledged,
        "platform_lost": result.platform_lost,
    }
