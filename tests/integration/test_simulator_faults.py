"""The simulator's fault injection over real HTTP: scripted errors, held timeouts, lost responses,
raw bodies, tampered headers, latency."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from sync_worker import simulator as sim_mod
from tests.integration import sim_http

# The shared fixtures (tests/integration/sim_http.py), registered for this module.
api = sim_http.api


def test_scripted_503_acks_nothing_and_is_counted(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A scripted 503 (HTML body) on the ack request leaves the queue intact; the retry acks once."""
    seeded = simulator.seed(sim_http.ACCOUNT, 150)
    t1 = sim_http.next_of(api.history())
    simulator.faults.script("history", [503, 502, 200])
    first = api.history(t1)
    assert first.status_code == 503
    assert first.headers["Content-Type"].startswith("text/html")
    assert api.history(t1).status_code == 502
    assert simulator.acknowledged(sim_http.ACCOUNT) == []
    ok = api.history(t1)
    assert ok.status_code == 200
    assert ok.json()["messages"] == seeded[100:]
    assert simulator.token_acks(sim_http.ACCOUNT) == {t1: 1}
    assert simulator.stats.faults["503"] == 1
    assert simulator.stats.faults["502"] == 1


def test_pending_counts_the_scripted_outcomes_no_request_has_taken(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """Faults.pending says how many scripted outcomes of a kind still wait (the soak queues one login
    refusal at a time with it)."""
    simulator.faults.script("history", [503, 503])
    assert simulator.faults.pending("history") == 2 and simulator.faults.pending("login") == 0
    assert simulator.faults.decide("history") == 503
    assert simulator.faults.pending("history") == 1


def test_429_carries_retry_after_seconds_or_date(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A 429 carries the configured Retry-After, in seconds or as an HTTP date."""
    simulator.faults.retry_after = "2"
    simulator.faults.script("history", [429])
    resp = api.history()
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "2"
    date = sim_mod.http_date(5)
    simulator.faults.retry_after = date
    simulator.faults.script("history", [429])
    assert api.history().headers["Retry-After"] == date
    assert simulator.stats.faults["429"] == 2


def test_timeout_fault_holds_past_client_read_timeout(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """A timeout fault never answers: the client's read timeout fires and nothing is acked."""
    simulator.seed(sim_http.ACCOUNT, 150)
    t1 = sim_http.next_of(api.history())
    simulator.faults.script("history", ["timeout"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.history(t1, timeout=(2, 0.3))
    assert simulator.stats.faults["timeout"] == 1
    assert simulator.acknowledged(sim_http.ACCOUNT) == []
    assert api.history(t1).status_code == 200


@pytest.mark.timing
def test_stop_interrupts_held_timeout() -> None:
    """stop() returns promptly even while a request is held by a 30 s timeout fault."""
    sim = sim_mod.Simulator()
    sim.start()
    api = sim_http.Api(sim).connect()
    sim.faults.timeout_seconds = 30
    sim.faults.script("history", ["timeout"])
    failed = threading.Event()

    def call() -> None:
        try:
            api.history(timeout=(2, 20))
        except requests.RequestException:
            failed.set()

    worker = threading.Thread(target=call)
    worker.start()
    while sim.stats.faults["timeout"] == 0:
        worker.join(0.01)
    started = time.monotonic()
    sim.stop()
    worker.join(5)
    assert time.monotonic() - started < 3
    assert failed.is_set()


def test_lost_response_acks_but_reply_never_arrives(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """lost_response processes the ack then drops the connection; a reusable replay gets the next block."""
    seeded = simulator.seed(sim_http.ACCOUNT, 250)
    t1 = sim_http.next_of(api.history())
    simulator.faults.script("history", ["lost_response"])
    with pytest.raises(requests.exceptions.ConnectionError):
        api.history(t1)
    assert simulator.acknowledged(sim_http.ACCOUNT) == seeded[:100]
    replay = api.history(t1)
    assert replay.json()["messages"] == seeded[100:200]
    assert simulator.token_acks(sim_http.ACCOUNT)[t1] == 1


def test_random_errors_are_seeded_counted_and_ack_nothing(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """With an error rate every failed response is counted as a fault and none of them acks a block."""
    simulator.seed(sim_http.ACCOUNT, 150)
    t1 = sim_http.next_of(api.history())
    simulator.faults.reseed(3)
    simulator.faults.error_rate = 0.5
    statuses = [api.history("NOTATOKEN0000000000").status_code for _ in range(40)]
    failed = [s for s in statuses if s >= 500]
    assert 5 < len(failed) < 35
    assert sum(simulator.stats.faults.values()) == len(failed)
    assert all(s == 400 for s in statuses if s < 500)
    assert simulator.token_acks(sim_http.ACCOUNT) == {t1: 0}


def test_raw_body_served_as_next_history_response(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """next_history_raw serves the exact bytes once, without touching the queue."""
    seeded = simulator.seed(sim_http.ACCOUNT, 5)
    simulator.faults.next_history_raw(b'{"hasMoreData": fal', status=200)
    resp = api.history()
    assert resp.content == b'{"hasMoreData": fal'
    assert simulator.queued(sim_http.ACCOUNT) == seeded
    assert api.history().json()["messages"] == seeded
    assert simulator.stats.faults["raw"] == 1


def test_large_raw_body(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A 10 MB body is delivered completely."""
    big = b'{"hasMoreData":false,"messages":[' + b'"' + b"x" * (10 * 1024 * 1024) + b'"]}'
    simulator.faults.next_history_raw(big)
    assert len(api.history().content) == len(big)


def test_tampered_headers_foreign_location_and_missing_location(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """A Raw without body rewrites the real reply's headers: a foreign Location or none on a 202."""
    simulator.seed(sim_http.ACCOUNT, 150)
    foreign = "https://evil.example/api/m2m/v1/sms/x/history?next=abc"
    simulator.faults.script(
        "history",
        [sim_mod.Raw(headers=(("Location", foreign),)), sim_mod.Raw(drop_headers=("Location",))],
    )
    first = api.history()
    assert (first.status_code, first.headers["Location"]) == (202, foreign)
    second = api.history()
    assert second.status_code == 202
    assert "Location" not in second.headers
    assert second.json()["hasMoreData"] is True
    assert simulator.stats.faults["tamper"] == 2


@pytest.mark.timing
def test_latency_is_applied_and_counted(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """Latency delays responses and each delayed request is counted."""
    simulator.faults.latency = 0.05
    started = time.monotonic()
    api.history()
    assert time.monotonic() - started >= 0.05
    assert simulator.stats.faults["latency"] == 1


@pytest.mark.timing
def test_latency_includes_the_servers_own_work(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A request takes its latency at the server, work included: slow processing is not added on top."""
    simulator.faults.latency = 0.5
    worked: list[float] = []

    def slow(request: sim_mod.Request, answer: sim_mod.Answer) -> None:
        # 0.4 s of server work inside the 0.5 s the request takes.
        time.sleep(0.4)
        worked.append(time.monotonic())

    simulator.hooks.rewrite = slow
    started = time.monotonic()
    assert api.history().status_code in (200, 202)
    elapsed = time.monotonic() - started
    assert worked
    assert 0.5 <= elapsed < 0.85, elapsed
