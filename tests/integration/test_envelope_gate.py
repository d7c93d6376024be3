"""The acknowledgement gate end to end: well-formed JSON that is not the block, served by the simulator over
HTTP to the real sync path (``app.sync_once``) and a real Postgres.

Each bad shape (``simulator.ENVELOPE_KINDS``) is served for one block on every attempt. Nothing past it is
acknowledged until its exact bytes are quarantined (checked from the simulator's ``drop`` hook, at the moment
the acknowledging request arrives), the run ends ``quarantined`` (exit 5), and once the simulator behaves
again every message is accounted for: stored exactly once, or (when the bad answer's token was followed after
the quarantine) held by the quarantined block, which ``quarantine replay`` stores when its top-level
``messages`` holds the block.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from sync_worker import quarantine, simulator, store
from tests.reliability import crash, inproc

ACCOUNT = "0252012345-00071"
ACCOUNTS = (ACCOUNT,)
# Kinds whose kept bytes still hold the block's messages as the top-level list: replay resolves them.
REPLAYABLE = frozenset({"no_has_more", "has_more_not_bool", "has_more_false_202"})
# Kinds that drop the Location: the bad answer's token is never followed, the block stays queued.
TOKENLESS = frozenset({"has_more_true_200"})


class _Misbehaving(simulator.Simulator):
    """Serves the block holding message ``#marker`` as ``kind`` on every attempt until ``fixed``; records the
    bad answers and, whenever a request acknowledges that block, what the database held at that moment."""

    def __init__(self, kind: str, marker: int, db_url: str) -> None:
        super().__init__(
            crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable"),
        )
        self.kind = kind
        self.needle = f" #{marker} temp=".encode()
        self.db_url = db_url
        self.fixed = False
        self.lock = threading.Lock()
        self.served: list[tuple[int, bytes, str | None]] = []  # (status, body, token it stood for)
        self.block: list[Any] = []
        # At each acknowledging request for the bad block: the quarantined bodies of the account.
        self.acks_saw: list[list[bytes]] = []
        self.hooks.rewrite = self._rewrite
        self.hooks.drop = self._watch

    def _rewrite(self, request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
        if request.kind != "history" or answer.status not in (200, 202) or self.fixed:
            return None
        if self.needle not in answer.body:
            return None
        token = next((v.split("next=")[1] for n, v in answer.headers if n == "Location"), None)
        status, body, headers = simulator.mangle(self.kind, answer.status, answer.body, answer.headers)
        with self.lock:
            self.served.append((status, body, token))
            self.block = json.loads(answer.body)["messages"]
        return simulator.Answer(status, body, tuple(headers))

    def _watch(self, request: simulator.Request) -> bool:
        with self.lock:
            tokens = {t for _, _, t in self.served if t is not None}
        if request.kind == "history" and not self.fixed and any(f"next={t}" in request.query for t in tokens):
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                bodies = [bytes(r[0]) for r in conn.execute("SELECT body FROM sms_quarantine")]
            self.acks_saw.append(bodies)
        return False


def _canon(messages: list[Any]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((ACCOUNT, crash._canon(m)) for m in messages)


def _quarantined(db_url: str) -> list[tuple[int, int, bytes, str | None]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, http_status, body, next_token FROM sms_quarantine ORDER BY id")
        return [(r[0], r[1], bytes(r[2]), r[3]) for r in rows]


def _replay_all(db_url: str) -> list[store.ReplayResult]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        results = [store.replay_quarantined(conn, q[0], quarantine.read_block) for q in _quarantined(db_url)]
    return [r for r in results if r is not None]


@pytest.mark.parametrize("kind", simulator.ENVELOPE_KINDS)
def test_a_middle_block_that_is_not_the_block_is_quarantined_before_anything_past_it_is_acknowledged(
    db_url: str, kind: str
) -> None:
    """Each bad shape on a 202 block, every attempt: quarantined with its bytes before its token is sent,
    exit 5, and no message lost or stored twice once the simulator behaves."""
    sim = _Misbehaving(kind, 150, db_url)
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=21))
        first, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, max_attempts=3)
        (result,) = first.accounts
        assert (result.outcome, first.exit_code, result.quarantined) == ("quarantined", 5, 1), result
        # Every attempt got the bad shape (the same request again), then one quarantine holding its bytes.
        assert len(sim.served) == 3 and len({body for _, body, _ in sim.served}) == 1
        [(_, status, kept, next_token)] = _quarantined(db_url)
        assert (status, kept) == sim.served[-1][:2]
        if kind in TOKENLESS:
            assert next_token is None and sim.acks_saw == []  # nothing past it was acknowledged
        else:
            assert next_token == sim.served[-1][2]
            # The block's token went out only after its bytes were quarantined, and only once.
            assert sim.acks_saw == [[kept]]
        block = _canon(sim.block)
        stored_first = crash.stored(db_url)

        sim.fixed = True
        again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert again.exit_code == 0, again.summary()
        delivered = crash.delivered(sim, ACCOUNTS)
        stored = crash.stored(db_url)
    assert sum(delivered.values()) == 250 and max(stored.values()) == 1
    assert not stored_first & block  # nothing of the bad answer was ever stored as a block
    if kind in TOKENLESS:
        # Never acknowledged: the next run read it properly.
        assert stored == delivered
        return
    # Acknowledged after the quarantine: exactly the quarantined block is what sms_history lacks ...
    assert delivered - stored == block
    replayed = _replay_all(db_url)
    stored = crash.stored(db_url)
    if kind in REPLAYABLE:
        # ... and its kept bytes hold it: replay stores it, everything is there exactly once.
        assert [(r.resolved, r.inserted) for r in replayed] == [(True, 100)]
        assert stored == delivered
    elif kind == "duplicate_messages":
        # ... and its kept bytes offer two top-level lists: every message offered is stored, but which
        # list was the block cannot be told, so it stays open for a person to look at.
        assert [(r.resolved, r.inserted) for r in replayed] == [(False, 100)]
        assert stored == delivered
    else:
        # ... and its kept bytes do not hold it as the top-level list: nothing is invented, it stays open.
        assert [(r.resolved, r.inserted) for r in replayed] == [(False, 0)]
        assert replayed[0].problem and stored == delivered - block


@pytest.mark.parametrize(
    "kind", ["no_messages", "renamed_messages", "duplicate_messages", "has_more_true_200"]
)
def test_a_final_block_that_is_not_the_block_stays_queued_and_is_read_later(db_url: str, kind: str) -> None:
    """A bad shape on the final 200: quarantined, exit 5 (whether more waits is unknown), and the next run
    stores that block: every message exactly once."""
    sim = _Misbehaving(kind, 230, db_url)
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=22))
        first, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, max_attempts=3)
        (result,) = first.accounts
        assert (result.outcome, first.exit_code) == ("quarantined", 5), result
        assert "unknown" in (result.error or "")
        [(_, status, kept, next_token)] = _quarantined(db_url)
        assert (status, kept, next_token) == (200, sim.served[-1][1], None)
        assert crash.row_count(db_url) == 200
        sim.fixed = True
        again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert again.exit_code == 0, again.summary()
        cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.exact and cmp.expected == 250, cmp


def test_renamed_messages_through_the_cli_exits_5_and_replay_leaves_it_open(db_url: str) -> None:
    """`once` as a subprocess: a 202 whose list is renamed (smsMessages) is quarantined (exit 5), not read as
    an empty block; `quarantine replay` finds no top-level messages and leaves the block unresolved."""
    sim = _Misbehaving("renamed_messages", 150, db_url)
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=23))
        env = crash.worker_env(
            sim, db_url, ACCOUNTS, THINGSPACE_RETRY_MAX_WAIT="0.05", THINGSPACE_RETRY_MAX_ATTEMPTS="3"
        )
        proc = _cli(env, "once")
        assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["quarantined"] == 1 and summary["outcomes"] == {"quarantined": 1}
        assert '"smsMessages"' in _quarantined(db_url)[0][2].decode()
        assert sim.acks_saw == [[_quarantined(db_url)[0][2]]]
        replay = _cli(env, "quarantine", "replay", "--json")
    assert replay.returncode == 5, replay.stderr[-2000:]
    [row] = json.loads(replay.stdout)["replayed"]
    assert (row["resolved"], row["messages"], row["inserted"]) == (False, 0, 0)
    assert "no top-level 'messages'" in row["problem"]


def test_simulator_answers_pass_the_gate_unchanged(db_url: str) -> None:
    """The simulator's normal 202s and final 200 (and an empty queue's 200) are read as blocks: exit 0."""
    sim = _Misbehaving("renamed_messages", -1, db_url)  # never matches: nothing is rewritten
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=24))
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, max_attempts=1)
        empty, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, max_attempts=1)
        cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert result.exit_code == 0 and empty.exit_code == 0, (result.summary(), empty.summary())
    assert [r.blocks for r in result.accounts + empty.accounts] == [3, 1]
    assert cmp.exact and cmp.expected == 250 and sim.served == []


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
