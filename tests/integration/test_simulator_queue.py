"""The simulator's history queue over real HTTP: paging, the Location token, acknowledgement rules,
reusable and single-use tokens, the final block."""

from __future__ import annotations

import re
from typing import Any

from sync_worker import simulator as sim_mod
from tests.integration import sim_http

# The shared fixtures (tests/integration/sim_http.py), registered for this module.
api = sim_http.api


def test_paging_1000_messages_acknowledges_every_token_once(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """1,000 messages come in 10 blocks (9 x 202 + Location, then 200); each token acks exactly once."""
    seeded = simulator.seed(sim_http.ACCOUNT, 1000, seed=7)
    statuses, received = [], []
    resp = api.history()
    while True:
        body = resp.json()
        statuses.append(resp.status_code)
        received.extend(body["messages"])
        assert body["hasMoreData"] is (resp.status_code == 202)
        if resp.status_code == 200:
            assert "Location" not in resp.headers
            break
        resp = api.history(sim_http.next_of(resp))
    assert statuses == [202] * 9 + [200]
    assert received == seeded
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded
    assert simulator.queued(sim_http.ACCOUNT) == []
    acks = simulator.token_acks(sim_http.ACCOUNT)
    assert len(acks) == 9
    assert set(acks.values()) == {1}
    assert simulator.stats.acks == 9


def test_location_is_relative_and_token_is_alphanumeric(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """Location is /sms/{aname}/history?next=TOKEN relative to /api/m2m/v1, token 20 letters/digits."""
    simulator.seed(sim_http.ACCOUNT, 150)
    resp = api.history()
    assert resp.status_code == 202
    match = re.fullmatch(r"/sms/0252012345-00001/history\?next=([A-Za-z0-9]{20})", resp.headers["Location"])
    assert match is not None


def test_get_without_next_returns_oldest_unacknowledged_block_again(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """Without next the same block (and token) comes back; nothing is dequeued."""
    seeded = simulator.seed(sim_http.ACCOUNT, 250)
    first, again = api.history(), api.history()
    assert first.json() == again.json()
    assert first.json()["messages"] == seeded[:100]
    assert sim_http.next_of(first) == sim_http.next_of(again)
    assert simulator.acknowledged(sim_http.ACCOUNT) == []
    second = api.history(sim_http.next_of(first))
    assert second.json()["messages"] == seeded[100:200]
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:100]
    assert api.history().json()["messages"] == seeded[100:200]


def test_block_size_is_configurable_at_run_time(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """block_size changes the size of the next block served."""
    simulator.seed(sim_http.ACCOUNT, 30)
    simulator.config.block_size = 10
    resp = api.history()
    assert resp.status_code == 202
    assert len(resp.json()["messages"]) == 10


def test_unknown_token_is_rejected(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A token the simulator never issued gets 400 InvalidNextToken and acks nothing."""
    simulator.seed(sim_http.ACCOUNT, 150)
    resp = api.history("AAAAAAAAAAAAAAAAAAAA")
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN
    assert simulator.acknowledged(sim_http.ACCOUNT) == []


def test_unknown_account_is_account_not_found(api: sim_http.Api) -> None:
    """History for an account the simulator does not know gets 400 AccountNotFound."""
    resp = api.history(account="0000000000-99999")
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND


def test_reusable_token_replay_returns_same_next_block(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """In reusable mode a replayed token returns the same follow-up block and token, acking nothing more."""
    seeded = simulator.seed(sim_http.ACCOUNT, 300)
    t1 = sim_http.next_of(api.history())
    b2 = api.history(t1)
    replay = api.history(t1)
    assert replay.status_code == 202
    assert replay.json() == b2.json()
    assert sim_http.next_of(replay) == sim_http.next_of(b2)
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:100]
    assert simulator.token_acks(sim_http.ACCOUNT)[t1] == 1
    assert simulator.stats.replays == 1
    final = api.history(sim_http.next_of(b2))
    assert final.status_code == 200
    stale = api.history(t1)
    assert stale.status_code == 400
    assert stale.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN


def test_single_use_token_second_use_rejected(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """In single_use mode the second use of a token gets InvalidNextToken."""
    simulator.config.token_mode = "single_use"
    simulator.seed(sim_http.ACCOUNT, 300)
    t1 = sim_http.next_of(api.history())
    assert api.history(t1).status_code == 202
    again = api.history(t1)
    assert again.status_code == 400
    assert again.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN
    assert simulator.token_acks(sim_http.ACCOUNT)[t1] == 1


def test_final_block_dequeued_on_delivery(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """final_ack=on_delivery: a 200 block is gone from the queue once delivered."""
    seeded = simulator.seed(sim_http.ACCOUNT, 40)
    resp = api.history()
    assert resp.status_code == 200
    assert resp.json() == {"hasMoreData": False, "messages": seeded}
    assert simulator.queued(sim_http.ACCOUNT) == []
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded
    assert api.history().json() == {"hasMoreData": False, "messages": []}


def test_final_block_dequeued_on_next_get(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """final_ack=on_next_get: the 200 block stays queued until the next GET without next."""
    simulator.config.final_ack = "on_next_get"
    seeded = simulator.seed(sim_http.ACCOUNT, 150)
    final = api.history(sim_http.next_of(api.history()))
    assert final.status_code == 200
    assert final.json()["messages"] == seeded[100:]
    assert simulator.queued(sim_http.ACCOUNT) == seeded[100:]
    late = sim_mod.seed_messages(3, seed=99)
    simulator.inject(sim_http.ACCOUNT, late)
    after = api.history()
    assert after.json()["messages"] == late
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded
    assert simulator.queued(sim_http.ACCOUNT) == late


def test_inject_serves_malformed_messages_as_given(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """inject() queues anything, even non-objects, and history serves it unchanged."""
    weird: list[Any] = [{"deviceIds": "nope"}, 42, None, {"message": "x" * 5, "extra": [1, 2]}]
    simulator.inject(sim_http.ACCOUNT, weird)
    assert api.history().json()["messages"] == weird
