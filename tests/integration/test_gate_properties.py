"""Property test of the acknowledgement gate on the real stack: 1,000 mutated history answers served by the
simulator over HTTP to the real client and ``sync.sync_account``, committing into a real Postgres.

One simulator, one client and one database serve every example; each example is a fresh account (its own
queue, cursor, rows and quarantine: a clean slate without dropping anything). An example queues 1-5
messages (blocks of 2), picks one block and serves it, for 1-3 of its 3 attempts, as a mutation of its real
answer (``tests.gate_oracle.answers``: members dropped, renamed, retyped or duplicated, extra members,
status / ``hasMoreData`` / ``Location`` disagreements, truncation, replaced bodies).

Invariant, checked from the simulator's ``drop`` hook the moment a request carrying a ``next`` token arrives:
the answer that token came with either listed messages that are now committed, each exactly once (it was
the block, by the oracle's independent reading of the documented rules), or it was not the block and its
exact bytes are quarantined. After the run: the quarantine was reported (outcome ``quarantined``), every
stored message was listed by an answer read as a block, and every message the simulator dequeued is stored
or was behind an answer that was quarantined (or that listed other messages) before its acknowledgement.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import client, db, retry, simulator, store, sync
from tests import gate_oracle
from tests.reliability import crash

BLOCK_SIZE = 2
ATTEMPTS = 3


@dataclasses.dataclass
class _Served:
    status: int
    body: bytes
    token: str | None  # the Location token the client saw (None: no Location, or not a 202)
    original: list[Any]  # the messages of the real block behind it


@dataclasses.dataclass
class _Plan:
    account: str
    needle: bytes
    bad: gate_oracle.Answer
    bad_attempts: int
    served: list[_Served] = dataclasses.field(default_factory=list)
    bad_served: int = 0
    lost: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    violations: list[str] = dataclasses.field(default_factory=list)
    acks: int = 0


class _Stack:
    def __init__(self, db_url: str) -> None:
        config = crash.crash_sim_config(("0252012345-00091",), final_ack="on_delivery", token_mode="reusable")
        self.sim = simulator.Simulator(dataclasses.replace(config, block_size=BLOCK_SIZE))
        self.sim.hooks.rewrite = self._rewrite
        self.sim.hooks.drop = self._watch
        self.db_url = db_url
        # The daemon's pooled connections: one server session serves every example's run.
        self.connect = db.Pool(db.connector(db_url), max_size=1)
        self.lock = threading.Lock()
        self.plan: _Plan | None = None
        self.names = itertools.count()
        self.watch: psycopg.Connection[Any] | None = None

    def __enter__(self) -> _Stack:
        self.sim.start()
        self.watch = psycopg.connect(self.db_url, autocommit=True)
        cfg = self.sim.config
        self.api = client.ThingSpaceClient(
            client.ClientConfig(
                base_url=self.sim.base_url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                username=cfg.username,
                password=cfg.password,
                timeout=(2.0, 10.0),
                retry=retry.RetryPolicy(max_attempts=ATTEMPTS, sleep=lambda _: None),
                allow_insecure_loopback=True,
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()
        self.connect.close()
        if self.watch is not None:
            self.watch.close()
        self.sim.stop()

    def _rewrite(self, request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
        plan = self.plan
        if plan is None or request.kind != "history" or request.account != plan.account:
            return None
        if answer.status not in (200, 202):
            return None
        original = json.loads(answer.body)["messages"]
        result: simulator.Answer | None = None
        if plan.needle in answer.body and plan.bad_served < plan.bad_attempts:
            plan.bad_served += 1
            headers = tuple(
                (n, v) for n, v in answer.headers if n.lower() != "location" or plan.bad.keep_location
            )
            result = simulator.Answer(plan.bad.status, plan.bad.body, headers)
        sent = result or answer
        location = next((v for n, v in sent.headers if n.lower() == "location"), None)
        token = location.split("next=", 1)[1] if location and sent.status == 202 else None
        with self.lock:
            plan.served.append(_Served(sent.status, sent.body, token, original))
        return result

    def _watch(self, request: simulator.Request) -> bool:
        plan = self.plan
        if plan is None or request.kind != "history" or request.account != plan.account:
            return False
        if not request.query.startswith("next="):
            return False
        token = request.query.split("=", 1)[1]
        with self.lock:
            came_with = [s for s in plan.served if s.token == token]
        if not came_with:
            plan.violations.append(f"next={token} was sent but never served")
            return False
        last = came_with[-1]
        plan.acks += 1
        listed = gate_oracle.recognised(last.status, last.body, last.token)
        assert self.watch is not None
        if listed is not None:
            stored = _stored(self.watch, plan.account)
            missing = [m for m in listed if stored[crash._canon(m)] != 1]
            if missing:
                plan.violations.append(
                    f"next={token} sent with {len(missing)} listed message(s) not stored once"
                )
            if listed != last.original:
                # A mutation that still reads as a block but lists other messages (a platform that
                # lies): what it listed is stored, the real block is acknowledged unseen.
                plan.lost.update(crash._canon(m) for m in last.original)
        else:
            kept = self.watch.execute(
                "SELECT count(*) FROM sms_quarantine"
                " WHERE account_name = %s AND body = %s AND next_token = %s",
                (plan.account, last.body, token),
            ).fetchone()
            if kept is None or kept[0] != 1:
                plan.violations.append(
                    f"next={token} sent for an answer that is not the block, not quarantined"
                )
            plan.lost.update(crash._canon(m) for m in last.original)
        return False


def _stored(conn: psycopg.Connection[Any], account: str) -> collections.Counter[str]:
    rows = conn.execute("SELECT raw_json FROM sms_history WHERE account_name = %s", (account,))
    return collections.Counter(crash._canon(json.loads(r[0])) for r in rows)


@pytest.fixture
def stack(db_url: str) -> Iterator[_Stack]:
    with _Stack(db_url) as made:
        yield made


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_block_is_acknowledged_unless_committed_or_quarantined(stack: _Stack, data: st.DataObject) -> None:
    """1,000 mutated answers against the real client and store: a next token goes out only after a commit
    holding exactly the messages its answer listed, or after that answer was quarantined with its bytes."""
    account = f"prop-{next(stack.names):06d}"
    n = data.draw(st.integers(1, 5), label="messages")
    # The same messages for every account: what is drawn must not depend on the example's account name.
    messages = crash.make_messages("prop", 0, n, seed=1)
    target = data.draw(st.integers(0, n - 1), label="message in the bad block")
    first = target - target % BLOCK_SIZE
    block = messages[first : first + BLOCK_SIZE]
    status = 202 if first + BLOCK_SIZE < n else 200
    members = [("hasMoreData", status == 202), ("messages", block)]
    bad = data.draw(gate_oracle.answers(status, members), label="served instead")
    plan = _Plan(
        account=account,
        needle=f" #{target} temp=".encode(),
        bad=bad,
        bad_attempts=data.draw(st.integers(1, ATTEMPTS), label="bad attempts"),
    )
    stack.sim.add_account(account)
    stack.sim.inject(account, messages)
    stack.plan = plan
    try:
        result = sync.sync_account(stack.api, account, store.PostgresStore(stack.connect))
    finally:
        stack.plan = None
    assert stack.watch is not None
    assert plan.violations == [], (plan.violations, result)
    quarantined = stack.watch.execute(
        "SELECT count(*) FROM sms_quarantine WHERE account_name = %s", (account,)
    ).fetchone()
    assert quarantined is not None and quarantined[0] == result.quarantined
    if result.quarantined:
        assert result.outcome == "quarantined", result
    stored = _stored(stack.watch, account)
    assert max(stored.values(), default=1) == 1
    offered = collections.Counter(crash._canon(m) for m in messages)
    for served in plan.served:
        listed = gate_oracle.recognised(served.status, served.body, served.token)
        offered.update(crash._canon(m) for m in listed or [])
    assert not stored - offered, "a stored message was never listed by an answer read as a block"
    dequeued = collections.Counter(crash._canon(m) for m in stack.sim.acknowledged(account))
    assert not dequeued - stored - plan.lost, "a dequeued message is neither stored nor quarantined"
