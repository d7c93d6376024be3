"""SIGKILL the worker at seeded moments over a backlog; afterwards nothing is missing or doubled.

Default (inside ``make test``): a small seeded run per simulator mode. The numbers reported in
tests/README.md come from the big run::

    CRASH_KILLS=50 CRASH_MESSAGES=20000 CRASH_REPORT=/tmp/crash.jsonl \
        .venv/bin/pytest tests/reliability/test_crash.py
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tests.reliability import crash

ACCOUNTS = ("0252012345-00001", "0252012345-00002", "0000000007-00003", "4200000000-00004")
KILLS = int(os.environ.get("CRASH_KILLS", "5"))
MESSAGES = int(os.environ.get("CRASH_MESSAGES", "2000"))
SEED = int(os.environ.get("CRASH_SEED", "20261125"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("final_ack", "token_mode"),
    [
        ("on_delivery", "reusable"),
        ("on_delivery", "single_use"),
        ("on_next_get", "reusable"),
        ("on_next_get", "single_use"),
    ],
)
def test_crash_harness_loses_and_duplicates_nothing(db_url: str, final_ack: str, token_mode: str) -> None:
    """After seeded SIGKILLs (timer, in a transaction, around the ack) the table equals the delivered set."""
    sim = crash.HookedSimulator(crash.crash_sim_config(ACCOUNTS, final_ack=final_ack, token_mode=token_mode))
    with sim:
        harness = crash.CrashHarness(sim, db_url, ACCOUNTS, messages=MESSAGES, kills=KILLS, seed=SEED)
        report = harness.run()
    print(report.line())
    out = os.environ.get("CRASH_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dataclasses.asdict(report)) + "\n")
    assert report.kills >= KILLS
    assert report.final_exit == 0, report.line()
    assert (report.missing_unexplained, report.duplicated, report.unexpected) == (0, 0, 0), (
        report.line(),
        report.missing_examples,
    )
    if (final_ack, token_mode) == ("on_next_get", "reusable"):
        # The final block stays queued until a head GET, and a replayed token serves it again:
        # the only platform answer under which a crash can never lose a message.
        assert report.missing == 0, report.line()
        assert report.rows == report.expected == report.injected
