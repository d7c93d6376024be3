"""What every scenario of issue 6 takes: the workload's sizes (full and ``--quick``) and the shared
``Context`` (server, simulator, results, the tree whose worker runs). ``bench.run`` and
``bench.compare`` build it; ``bench.scenarios`` and ``bench.standalone_scenarios`` measure with it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bench import harness, in_tree, pg, proc

BLOCK = 100


@dataclasses.dataclass(frozen=True)
class Sizes:
    reps: int
    limit_backlog: int  # scenario 1: messages fetched / built / committed per repetition
    one_account: int  # scenario 2
    many_accounts: int  # scenario 3: number of accounts
    many_each: int  # scenario 3: messages per account
    many_concurrency: int
    latency: float  # scenario 4
    latency_accounts: int
    latency_each: int
    latency_concurrency: int
    wide_accounts: int  # scenario 4b: many small accounts at high concurrency (issue 14)
    wide_each: int
    wide_concurrency: int
    memory_small: int  # scenario 5
    memory_large: int
    big_table: int  # scenario 6: rows already present
    growth_blocks: int  # scenario 6: blocks timed per repetition
    peer_backlog: int  # scenario 7


FULL = Sizes(
    reps=3,
    limit_backlog=50_000,
    one_account=200_000,
    many_accounts=8,
    many_each=25_000,
    many_concurrency=8,
    latency=0.1,
    latency_accounts=50,
    latency_each=2_000,
    latency_concurrency=10,
    wide_accounts=500,
    wide_each=200,
    wide_concurrency=64,
    memory_small=10_000,
    memory_large=1_000_000,
    big_table=10_000_000,
    growth_blocks=300,
    peer_backlog=200_000,
)
QUICK = Sizes(
    reps=3,
    limit_backlog=5_000,
    one_account=10_000,
    many_accounts=4,
    many_each=2_500,
    many_concurrency=4,
    latency=0.1,
    latency_accounts=10,
    latency_each=500,
    latency_concurrency=5,
    wide_accounts=64,
    wide_each=100,
    wide_concurrency=32,
    memory_small=2_000,
    memory_large=20_000,
    big_table=200_000,
    growth_blocks=50,
    peer_backlog=10_000,
)


@dataclasses.dataclass
class Context:
    admin_dsn: str
    sim: proc.SimHost
    sizes: Sizes
    results: harness.Results
    log: Callable[[str], None]
    profile: bool = False
    pg_pid: int | None = None
    # The tree whose worker runs as a process, and the database its schema is cloned from
    # (bench.compare sets an older tree and a template that tree's own migrations built).
    tree: Path = in_tree.ROOT
    template: str = pg.TEMPLATE
    # next() on a count is atomic under the GIL: names stay unique across threads.
    _serial: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def name(self, prefix: str) -> str:
        """A fresh account / database name, so no repetition sees another's data."""
        return f"{prefix}-{os.getpid() % 10000:04d}-{next(self._serial):04d}"

    def worker_env(self, dsn: str, accounts: list[str], concurrency: int = 4) -> dict[str, str]:
        return {
            **self.sim.env,
            "SYNC_DATABASE_URL": dsn,
            "SYNC_ACCOUNTS": ",".join(accounts),
            "SYNC_CONCURRENCY": str(concurrency),
            # The bench drains whole backlogs; the run budget must never cut a run short.
            "SYNC_RUN_BUDGET_SECONDS": "86400",
            "SYNC_INTERVAL_SECONDS": "86400",
            "SYNC_LOG_FORMAT": "json",
            "SYNC_LOG_LEVEL": "INFO",
        }

    def fresh_db(self, prefix: str = "bench") -> tuple[str, str]:
        name = self.name(prefix).replace("-", "_")
        return name, pg.fresh_database(self.admin_dsn, name, self.template)


def settings(env: Mapping[str, str]) -> Any:
    from sync_worker import config

    return config.load(env)
