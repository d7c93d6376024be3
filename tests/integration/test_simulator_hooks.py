"""The simulator's hooks (drop, rewrite, answered, final block, issued) and requeue, over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from sync_worker import simulator as sim_mod
from tests.integration import sim_http

# The shared fixtures (tests/integration/sim_http.py), registered for this module.
api = sim_http.api


def test_drop_hook_closes_the_connection_unanswered_and_acknowledges_nothing(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.drop returning True drops that request unprocessed: no answer, no ack, counted as a fault."""
    simulator.seed(sim_http.ACCOUNT, 250)
    token = sim_http.next_of(api.history())
    seen: list[sim_mod.Request] = []

    def drop(request: sim_mod.Request) -> bool:
        seen.append(request)
        return request.kind == "history" and request.query.startswith("next=")

    simulator.hooks.drop = drop
    with pytest.raises(requests.ConnectionError):
        api.history(token)
    simulator.hooks.drop = None
    assert [(r.kind, r.account, r.query) for r in seen] == [("history", sim_http.ACCOUNT, f"next={token}")]
    assert (
        simulator.acknowledged(sim_http.ACCOUNT) == [] and simulator.token_acks(sim_http.ACCOUNT)[token] == 0
    )
    assert simulator.stats.faults["dropped"] == 1
    assert api.history(token).status_code == 202


def test_rewrite_hook_replaces_the_answer_and_a_replaced_final_block_stays_queued(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.rewrite's Answer is what the client gets; a final block sent that way is not dequeued."""
    seeded = simulator.seed(sim_http.ACCOUNT, 30)

    def rewrite(request: sim_mod.Request, answer: sim_mod.Answer) -> sim_mod.Answer | None:
        if request.kind != "history":
            return None
        return sim_mod.Answer(503, b"rewritten", answer.with_header("X-Hooked", "1").headers)

    simulator.hooks.rewrite = rewrite
    resp = api.history()
    assert (resp.status_code, resp.content, resp.headers["X-Hooked"]) == (503, b"rewritten", "1")
    assert simulator.queued(sim_http.ACCOUNT) == seeded
    simulator.hooks.rewrite = lambda _request, _answer: None
    assert api.history().json()["messages"] == seeded
    assert simulator.queued(sim_http.ACCOUNT) == []


def test_answered_hook_runs_after_every_answer_including_fault_replies(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.answered gets each request with the status it was answered with, scripted faults too."""
    simulator.seed(sim_http.ACCOUNT, 10)
    answered: list[tuple[str, int]] = []
    # The hook runs after the answer is on the wire: reading the request log waits until every
    # earlier answer (the fixture's token and login) has run its hooks, so none lands after this.
    assert len(simulator.stats.requests) >= 2
    simulator.hooks.answered = lambda request, status: answered.append((request.kind, status))
    simulator.faults.script("history", [429])
    assert api.history().status_code == 429
    assert api.history().status_code == 200
    assert len(simulator.stats.requests) >= 4
    assert answered == [("history", 429), ("history", 200)]


@pytest.mark.parametrize("final_ack", ["on_delivery", "on_next_get"])
def test_final_block_hook_reports_the_final_block_written_out(
    api: sim_http.Api, simulator: sim_mod.Simulator, final_ack: sim_mod.FinalAck
) -> None:
    """hooks.final_block gets a final block's messages once written (dequeued, or pending till a head GET)."""
    simulator.config.final_ack = final_ack
    seeded = simulator.seed(sim_http.ACCOUNT, 150)
    finals: list[tuple[str, list[Any]]] = []
    simulator.hooks.final_block = lambda account, messages: finals.append((account, messages))
    api.history(sim_http.next_of(api.history()))
    # queued() waits for the after-write step that calls the hook: read it first.
    assert simulator.queued(sim_http.ACCOUNT) == ([] if final_ack == "on_delivery" else seeded[100:])
    assert finals == [(sim_http.ACCOUNT, seeded[100:])]


def test_issued_hook_sees_every_bearer_and_session_token(simulator: sim_mod.Simulator) -> None:
    """hooks.issued is told each bearer and session token the moment the simulator issues it."""
    issued: list[tuple[str, str]] = []
    simulator.hooks.issued = lambda kind, token: issued.append((kind, token))
    api = sim_http.Api(simulator).connect()
    assert issued == [("bearer", api.bearer), ("session", api.session)]


def test_requeue_serves_acknowledged_messages_again_ahead_of_the_queue(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """requeue(account, n) puts the last n acknowledged messages back at the head, once each."""
    seeded = simulator.seed(sim_http.ACCOUNT, 250)
    token = sim_http.next_of(api.history())
    api.history(token)
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:100]
    assert simulator.requeue(sim_http.ACCOUNT, 40) == seeded[60:100]
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:60]
    assert simulator.queued(sim_http.ACCOUNT) == seeded[60:]
    first = api.history()
    assert first.json()["messages"] == seeded[60:160]
    # The head block is renumbered: it has a token of its own, and the old one acknowledges nothing.
    assert sim_http.next_of(first) != token
    # Acknowledging it returns the final block, dequeued on delivery.
    api.history(sim_http.next_of(first))
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded
    assert simulator.requeue(sim_http.ACCOUNT, 1000) == seeded
    assert simulator.requeue("0000000000-99999", 5) == []


def test_requeue_keeps_a_pending_final_block_ahead_under_on_next_get(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """On requeue under on_next_get, a handed-out final block stays first; a head GET dequeues it."""
    simulator.config.final_ack = "on_next_get"
    seeded = simulator.seed(sim_http.ACCOUNT, 150)
    api.history(sim_http.next_of(api.history()))
    assert simulator.requeue(sim_http.ACCOUNT, 30) == seeded[70:100]
    assert simulator.queued(sim_http.ACCOUNT) == seeded[100:] + seeded[70:100]
    assert api.history().json()["messages"] == seeded[70:100]
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:70] + seeded[100:]


def test_scripted_session_expiry_mid_paging_acks_nothing(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """A scripted expire_session refuses exactly that ack request; after one re-login the token acks."""
    seeded = simulator.seed(sim_http.ACCOUNT, 250)
    t1 = sim_http.next_of(api.history())
    simulator.faults.script("history", ["expire_session"])
    refused = api.history(t1)
    assert refused.json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED
    assert simulator.acknowledged(sim_http.ACCOUNT) == []
    api.session = api.login().json()["sessionToken"]
    assert api.history(t1).json()["messages"] == seeded[100:200]
    assert simulator.token_acks(sim_http.ACCOUNT)[t1] == 1
    assert (simulator.stats.logins, simulator.stats.faults["expire_session"]) == (2, 1)
