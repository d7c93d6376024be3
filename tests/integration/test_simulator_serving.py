"""The simulator as a server: send and callbacks, seeded traffic, a request log without credentials,
the standalone serve command, the listen backlog and Nagle."""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import threading

import pytest
import requests

from sync_worker import config
from sync_worker import simulator as sim_mod
from sync_worker.simulator import server as sim_server
from tests.integration import sim_http

# The shared fixtures (tests/integration/sim_http.py), registered for this module.
api = sim_http.api


def test_send_is_validated_recorded_and_answered(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """A valid send is recorded and gets a UUID requestId; invalid ones get 400 and are not recorded."""
    body = {
        "accountName": sim_http.ACCOUNT,
        "smsMessage": "ping",
        "deviceIds": [{"id": "00123456789012", "kind": "imei"}],
    }
    resp = api.send(body)
    assert resp.status_code == 200
    assert re.fullmatch(r"[0-9a-f-]{36}", resp.json()["requestId"])
    assert simulator.sent == [body]
    missing = api.send({"accountName": sim_http.ACCOUNT, "deviceIds": body["deviceIds"]})
    assert missing.json()["errorCode"] == sim_mod.CODE_INVALID_REQUEST
    too_long = api.send({**body, "smsMessage": "x" * 161})
    assert too_long.status_code == 400
    unknown = api.send({**body, "accountName": "0000000000-99999"})
    assert unknown.json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND
    assert simulator.sent == [body]
    assert simulator.stats.sends == 4


def test_start_callbacks(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """startCallbacks answers {success: true} and is counted; unknown account -> AccountNotFound."""
    resp = api.start_callbacks()
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    assert api.start_callbacks("0000000000-99999").json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND
    assert simulator.stats.start_callbacks == 2


def test_seed_is_deterministic_and_realistic() -> None:
    """Seeded traffic repeats exactly and has leading zeros, offsets, Z+ms, duplicates and unicode."""
    a, b = sim_mod.seed_messages(500, seed=5), sim_mod.seed_messages(500, seed=5)
    assert a == b
    assert a != sim_mod.seed_messages(500, seed=6)
    stamps = [m["timestamp"] for m in a]
    assert any(re.search(r"\.\d{3}Z$", s) for s in stamps)
    assert any(re.search(r"[+-]\d\d:\d\d$", s) for s in stamps)
    assert any(d["id"].startswith("0") for m in a for d in m["deviceIds"])
    assert any(not m["message"].isascii() for m in a)
    as_text = [repr(m) for m in a]
    assert len(set(as_text)) < len(as_text)


def test_request_log_never_holds_credentials(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
    """The request log keeps method, path, query and status but no secret or token value."""
    simulator.seed(sim_http.ACCOUNT, 150)
    api.history(sim_http.next_of(api.history()))
    log = repr(list(simulator.stats.requests)) + repr(simulator.stats.as_dict())
    for value in (
        simulator.config.client_secret.reveal(),
        simulator.config.password.reveal(),
        api.bearer,
        api.session,
    ):
        assert value not in log
    assert [r.kind for r in simulator.stats.requests] == ["token", "login", "history", "history"]
    assert simulator.stats.requests[-1].query.startswith("next=")


def _exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            found[name] = value
    return found


def test_serve_prints_pasteable_exports_serves_seeded_traffic_and_returns_on_stop() -> None:
    """serve() seeds each account, prints exports equal to worker_env, applies block_size, returns on stop."""
    out, stop, ready = io.StringIO(), threading.Event(), threading.Event()
    started: list[sim_mod.Simulator] = []

    def on_ready(sim: sim_mod.Simulator) -> None:
        started.append(sim)
        ready.set()

    accounts = [sim_http.ACCOUNT, "0252012345-00002"]
    kwargs = {"port": 0, "seed_messages": 120, "accounts": accounts, "block_size": 50}
    thread = threading.Thread(
        target=sim_mod.serve, kwargs={**kwargs, "stop": stop, "out": out, "ready": on_ready}
    )
    thread.start()
    try:
        assert ready.wait(10)
        (sim,) = started
        text = out.getvalue()
        assert text.splitlines()[0] == f"# ThingSpace simulator listening on {sim.base_url}"
        assert _exports(text) == sim.worker_env(accounts=accounts)
        assert [len(sim.queued(a)) for a in accounts] == [120, 120]
        # Each account gets its own seed, so the two backlogs differ.
        assert sim.queued(accounts[0]) != sim.queued(accounts[1])
        api = sim_http.Api(sim).connect()
        assert len(api.history().json()["messages"]) == 50
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_worker_env_is_what_the_worker_needs_and_inherit_drops_the_parents_settings(
    simulator: sim_mod.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """worker_env loads as settings for the simulator; inherit keeps PATH, drops SYNC_/THINGSPACE_/PG*."""
    env = simulator.worker_env(
        accounts=[sim_http.ACCOUNT, "0252012345-00002"], database_url="postgresql://db/x"
    )
    settings = config.load(env)
    assert settings.base_url == simulator.base_url
    assert [a.name for a in settings.accounts] == [sim_http.ACCOUNT, "0252012345-00002"]
    assert settings.client_secret.reveal() == simulator.config.client_secret.reveal()
    assert simulator.worker_env(SYNC_ACCOUNTS="x")["SYNC_ACCOUNTS"] == "x"
    monkeypatch.setenv("THINGSPACE_USERNAME", "someone-real")
    monkeypatch.setenv("PGSERVICE", "prod")
    monkeypatch.setenv("SYNC_DATABASE_URL", "postgresql://prod/db")
    inherited = simulator.worker_env(inherit=True)
    assert inherited["PATH"] == os.environ["PATH"]
    assert inherited["THINGSPACE_USERNAME"] == simulator.config.username
    assert "PGSERVICE" not in inherited and "SYNC_DATABASE_URL" not in inherited


def test_unknown_account_views_are_empty(simulator: sim_mod.Simulator) -> None:
    """Reading an account the simulator does not know gives empty views and does not create it."""
    assert simulator.queued("nobody") == []
    assert simulator.acknowledged("nobody") == []
    assert "nobody" not in simulator.accounts()


def test_listen_backlog_takes_a_whole_pool_of_connections_at_once() -> None:
    """64 connections opened at once all complete their handshake before any is accepted: a worker's
    pool connecting together loses no SYN (each lost one costs a 1 s retransmit)."""
    srv = sim_server.Server(("127.0.0.1", 0), lambda h, method: None, lambda: False)
    clients: list[socket.socket] = []
    try:
        port = srv.server_address[1]
        for _ in range(64):
            # Nothing accepts yet: only the kernel's backlog holds these.
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        assert len(clients) == 64
    finally:
        for c in clients:
            c.close()
        srv.server_close()


def test_replies_are_sent_without_nagle_delay() -> None:
    """The simulator's accepted sockets have TCP_NODELAY: a reply is never held for an ACK."""
    seen: list[int] = []

    def dispatch(h: sim_server.Handler, method: str) -> None:
        seen.append(h.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        h.write_reply(200, b"{}", [("Content-Type", "application/json")])

    srv = sim_server.Server(("127.0.0.1", 0), dispatch, lambda: False)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with requests.Session() as http:
            assert http.get(f"http://127.0.0.1:{srv.server_address[1]}/x", timeout=5).status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    assert seen and seen[0] != 0
