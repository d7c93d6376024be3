"""Unreadable history answers end to end: simulator over HTTP, `sync-worker` as a subprocess, real Postgres.

One-shot unreadable answers are transient faults (the same request again; nothing quarantined, exit 0);
answers that stay unreadable are quarantined with their exact bytes, the queue drains past them, `once`
exits 5, and `quarantine replay` stores what the kept bytes hold.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from sync_worker import simulator
from tests.reliability import crash

ACCOUNTS = ("0252012345-00041", "0252012345-00042", "0342077777-00043")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _env(sim: simulator.Simulator, db_url: str, accounts: tuple[str, ...] = ACCOUNTS) -> dict[str, str]:
    # Retry waits stay short (0.05 s) so the subprocess spends its time on requests, not backoff.
    return crash.worker_env(
        sim, db_url, accounts, THINGSPACE_RETRY_MAX_WAIT="0.05", THINGSPACE_RETRY_MAX_ATTEMPTS="5"
    )


def _quarantine_rows(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT id, account_name, http_status, body, resolved_at IS NOT NULL"
            " FROM sms_quarantine ORDER BY id"
        ).fetchall()


@pytest.mark.slow
def test_one_shot_unreadable_answers_at_15_percent_lose_and_quarantine_nothing(db_url: str) -> None:
    """15% of history answers unreadable once (all five kinds): every message stored once, exit 0."""
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_delivery", token_mode="reusable")
    )
    sim.faults.reseed(15)
    sim.faults.unreadable_rate = 0.15
    with sim:
        for account in ACCOUNTS:
            sim.inject(account, crash.make_messages(account, 0, 2000, seed=15))
        env = _env(sim, db_url)
        assert _cli(env, "migrate").returncode == 0
        proc = _cli(env, "once")
        faults = {k: v for k, v in sim.stats.faults.items() if k.startswith("unreadable_")}
        history = sim.stats.history_requests
        cmp = crash.compare(sim, db_url, ACCOUNTS)
        result = _summary(proc)
    print(
        "15% one-shot:",
        f"delivered={cmp.expected} stored={cmp.rows} quarantined={result['quarantined']}",
        f"exit={proc.returncode} faults={faults} history_requests={history}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(faults) == {f"unreadable_{k}" for k in simulator.UNREADABLE_KINDS}, faults
    assert sum(faults.values()) >= 10
    assert cmp.exact and cmp.expected == 6000, cmp
    assert result["quarantined"] == 0 and result["outcomes"] == {"succeeded": 3}, result
    assert _quarantine_rows(db_url) == []
    assert all(sim.queued(a) == [] for a in ACCOUNTS)


class _PersistentlyUnreadable(crash.HookedSimulator):
    """Every time a block holding one of ``markers`` is served, its answer is made unreadable in that
    marker's way (``simulator.mangle``); ``fixed`` stops it."""

    def __init__(self, config: simulator.SimConfig, markers: dict[bytes, str]) -> None:
        super().__init__(config)
        self.markers = markers
        self.fixed = False
        self.served: collections.Counter[str] = collections.Counter()
        self.blocks: dict[str, list[Any]] = {}
        self.hooks.rewrite = self._unreadable

    def _unreadable(self, request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
        if request.kind != "history" or answer.status not in (200, 202) or self.fixed:
            return None
        for marker, how in self.markers.items():
            if marker in answer.body:
                self.served[how] += 1
                self.blocks[how] = json.loads(answer.body)["messages"]
                status, body, headers = simulator.mangle(how, answer.status, answer.body, answer.headers)
                return simulator.Answer(status, body, tuple(headers))
        return None


def _marker(i: int) -> bytes:
    return f" #{i} temp=".encode()


@pytest.mark.slow
def test_persistently_unreadable_blocks_are_quarantined_drained_past_and_replayed(db_url: str) -> None:
    """Blocks that stay unreadable: kept exactly, the queues drain past them, exit 5; replay stores them."""
    markers = {_marker(120): "cut_short", _marker(1150): "not_json", _marker(2230): "wrong_envelope"}
    sim = _PersistentlyUnreadable(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable"), markers
    )
    with sim:
        sim.inject(ACCOUNTS[0], crash.make_messages(ACCOUNTS[0], 0, 450, seed=3))
        sim.inject(ACCOUNTS[1], crash.make_messages(ACCOUNTS[1], 1000, 450, seed=3))
        sim.inject(ACCOUNTS[2], crash.make_messages(ACCOUNTS[2], 2000, 450, seed=3))
        env = _env(sim, db_url)
        assert _cli(env, "migrate").returncode == 0
        first = _cli(env, "once")
        assert first.returncode == 5, first.stderr[-2000:]
        assert _summary(first)["quarantined"] == 3
        # Every attempt came back unreadable before anything was quarantined.
        assert all(n >= 5 for n in sim.served.values()) and set(sim.served) == set(markers.values())
        rows = _quarantine_rows(db_url)
        assert len(rows) == 3 and all(r[2] == 202 and not r[4] for r in rows)
        # The queues drained past them: everything else is stored, exactly once.
        poisoned = collections.Counter(
            (account, crash._canon(m))
            for account in ACCOUNTS
            for how, block in sim.blocks.items()
            for m in block
            if _marker_account(m) == account
        )
        assert sum(poisoned.values()) == 300
        assert crash.stored(db_url) + poisoned == crash.delivered(sim, ACCOUNTS)

        listed = _cli(env, "quarantine", "list", "--json")
        assert listed.returncode == 0
        shown = json.loads(listed.stdout)["quarantined"]
        assert sorted(b["id"] for b in shown) == sorted(r[0] for r in rows)
        status = json.loads(_cli(env, "status", "--json").stdout)["accounts"]
        assert {a["account_name"]: a["quarantined"] for a in status} == dict.fromkeys(ACCOUNTS, 1)
        assert {a["last_run_outcome"] for a in status} == {"quarantined"}

        sim.fixed = True
        again = _cli(env, "once")
        assert again.returncode == 0, again.stderr[-2000:]

        replay = _cli(env, "quarantine", "replay", "--json")
        replayed = {r["quarantine_id"]: r for r in json.loads(replay.stdout)["replayed"]}
    # not_json holds no message: it stays unresolved, so replay exits 5.
    assert replay.returncode == 5, replay.stderr[-2000:]
    by_kind = {_kind_of(r[3]): replayed[r[0]] for r in rows}
    assert by_kind["wrong_envelope"]["resolved"] and by_kind["wrong_envelope"]["inserted"] == 100
    assert not by_kind["cut_short"]["resolved"] and 0 < by_kind["cut_short"]["inserted"] < 100
    assert not by_kind["not_json"]["resolved"] and by_kind["not_json"]["messages"] == 0
    found = crash.stored(db_url)
    expected = crash.delivered(sim, ACCOUNTS)
    assert not found - expected and max(found.values()) == 1
    missing = expected - found
    assert sum(missing.values()) == 200 - by_kind["cut_short"]["inserted"]
    # A second replay stores nothing new: replays are absorbed.
    second = _cli(env, "quarantine", "replay", "--json")
    assert all(r["inserted"] == 0 for r in json.loads(second.stdout)["replayed"])
    assert crash.stored(db_url) == found


def _marker_account(message: dict[str, Any]) -> str:
    return str(message["message"]).split(" ", 1)[0]


def _kind_of(body: bytes) -> str:
    if body.startswith(b"<html>"):
        return "not_json"
    if b'"hasMoreData":"true"' in body:
        return "wrong_envelope"
    return "cut_short"


@pytest.mark.parametrize("how", ["empty_200", "bare_202"])
def test_unreadable_answer_without_paging_never_counts_as_the_end(db_url: str, how: str) -> None:
    """A mid-queue answer that stays an empty 200 / bare 202: the run is not a success, nothing is skipped."""
    accounts = ACCOUNTS[:1]
    sim = _PersistentlyUnreadable(
        crash.crash_sim_config(accounts, final_ack="on_next_get", token_mode="reusable"), {_marker(150): how}
    )
    with sim:
        sim.inject(accounts[0], crash.make_messages(accounts[0], 0, 450, seed=4))
        env = _env(sim, db_url, accounts)
        assert _cli(env, "migrate").returncode == 0
        first = _cli(env, "once")
        assert first.returncode in (1, 5), first.stdout[-2000:]
        assert _summary(first)["outcomes"] != {"succeeded": 1}
        assert crash.row_count(db_url) == 100
        sim.fixed = True
        second = _cli(env, "once")
        assert second.returncode == 0, second.stderr[-2000:]
        cmp = crash.compare(sim, db_url, accounts)
    assert cmp.exact and cmp.expected == 450, cmp


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.slow
def test_600_and_900_deep_messages_do_not_stop_their_queues(db_url: str) -> None:
    """A 600- and a 900-deep message (which once broke row building forever): both queues drain, exit 0."""
    accounts = ACCOUNTS[:2]
    sim = crash.HookedSimulator(
        crash.crash_sim_config(accounts, final_ack="on_delivery", token_mode="reusable")
    )
    with sim:
        for account, depth in zip(accounts, (600, 900), strict=True):
            messages = crash.make_messages(account, 0, 250, seed=9)
            messages[130] = {**messages[130], "extra": _deep(depth)}
            sim.inject(account, messages)
        env = _env(sim, db_url, accounts)
        assert _cli(env, "migrate").returncode == 0
        proc = _cli(env, "once")
        assert proc.returncode == 0, proc.stderr[-2000:]
        cmp = crash.compare(sim, db_url, accounts)
        with psycopg.connect(db_url) as conn:
            deep = conn.execute(
                "SELECT account_name, raw IS NULL, problems FROM sms_history WHERE raw_json LIKE '%extra%'"
                " ORDER BY account_name"
            ).fetchall()
    # Every message, the deep ones included, is one row; the deep ones keep their text in raw_json only.
    assert cmp.exact and cmp.expected == 500, cmp
    assert [(a, null) for a, null, _ in deep] == [(accounts[0], True), (accounts[1], True)]
    assert all(any("nested more than" in p for p in problems) for _, _, problems in deep)
