"""The ThingSpace simulator over real HTTP, driven with plain ``requests`` (not our client)."""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import threading
import time
import urllib.parse
from typing import Any

import pytest
import requests

from sync_worker import config
from sync_worker import simulator as sim_mod
from sync_worker.simulator import server as sim_server

ACCOUNT = "0252012345-00001"


class Api:
    """Just enough raw HTTP to talk to the simulator."""

    def __init__(self, sim: sim_mod.Simulator) -> None:
        self.sim = sim
        self.base = sim.base_url
        self.http = requests.Session()
        self.bearer = ""
        self.session = ""

    def token(self, client_id: str | None = None, client_secret: str | None = None) -> requests.Response:
        auth = (
            client_id or self.sim.config.client_id,
            client_secret or self.sim.config.client_secret.reveal(),
        )
        return self.http.post(
            self.base + "/ts/v1/oauth2/token", auth=auth, data={"grant_type": "client_credentials"}
        )

    def login(self, password: str | None = None) -> requests.Response:
        body = {
            "username": self.sim.config.username,
            "password": password or self.sim.config.password.reveal(),
        }
        return self.http.post(
            self.base + "/m2m/v1/session/login",
            json=body,
            headers={"Authorization": "Bearer " + self.bearer},
        )

    def connect(self) -> Api:
        self.bearer = self.token().json()["access_token"]
        self.session = self.login().json()["sessionToken"]
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.bearer, "VZ-M2M-Token": self.session}

    def history(self, next_token: str | None = None, account: str = ACCOUNT, **kw: Any) -> requests.Response:
        params = {"next": next_token} if next_token is not None else None
        quoted = urllib.parse.quote(account, safe="")
        return self.http.get(
            f"{self.base}/m2m/v1/sms/{quoted}/history", params=params, headers=self.headers(), **kw
        )

    def send(self, body: Any) -> requests.Response:
        return self.http.post(self.base + "/m2m/v1/sms", json=body, headers=self.headers())

    def start_callbacks(self, account: str = ACCOUNT) -> requests.Response:
        return self.http.put(f"{self.base}/m2m/v1/sms/{account}/startCallbacks", headers=self.headers())


def next_of(resp: requests.Response) -> str:
    location = resp.headers["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    return query["next"][0]


@pytest.fixture
def api(simulator: sim_mod.Simulator) -> Api:
    return Api(simulator).connect()


# --- auth -------------------------------------------------------------------


def test_a_fresh_token_has_the_whole_hour_whatever_the_clock_reads() -> None:
    """expires_in of a fresh token is 3600 also where (now + 3600.0) - now rounds below 3600 in floats."""
    now = 496.0907
    assert (now + 3600.0) - now < 3600  # the float arithmetic the countdown must not show
    with sim_mod.Simulator(sim_mod.SimConfig(clock=lambda: now)) as sim:
        assert Api(sim).token().json()["expires_in"] == 3600


def test_token_endpoint_returns_bearer_for_valid_client(simulator: sim_mod.Simulator) -> None:
    """Client credentials with Basic auth get an access token of type bearer valid for an hour."""
    resp = Api(simulator).token()
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert re.fullmatch(r"[A-Za-z0-9]{20,}", body["access_token"])
    assert simulator.stats.token_requests == 1


def test_token_endpoint_rejects_bad_client_with_oauth_error(simulator: sim_mod.Simulator) -> None:
    """A wrong client secret gets 401 with the OAuth error shape, no token."""
    resp = Api(simulator).token(client_secret="wrong-secret")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "error_description" in resp.json()


def test_m2m_call_without_valid_bearer_gets_gateway_fault(api: Api) -> None:
    """An unknown bearer token gets 401 with the gateway fault body (code 900901)."""
    api.bearer = "not-a-token"
    resp = api.history()
    assert resp.status_code == 401
    assert resp.json()["fault"]["code"] == 900901
    assert resp.json()["fault"]["message"] == "Invalid Credentials"


def test_m2m_call_without_session_gets_session_expired(api: Api) -> None:
    """A missing or unknown VZ-M2M-Token gets 400 SessionToken.Expired with the vendor message."""
    api.session = "unknown-session"
    resp = api.history()
    assert resp.status_code == 400
    assert resp.json() == {
        "errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired",
        "errorMessage": "The Session has expired.",
    }


def test_bad_password_then_lockout_after_five_failures(simulator: sim_mod.Simulator) -> None:
    """Five wrong passwords get InvalidCredentials; then even the right one is refused as locked."""
    api = Api(simulator)
    api.bearer = api.token().json()["access_token"]
    codes = [api.login(password="wrong-password").json()["errorCode"] for _ in range(5)]
    assert codes == [sim_mod.CODE_INVALID_CREDENTIALS] * 5
    locked = api.login()
    assert locked.status_code == 400
    assert locked.json()["errorCode"] == sim_mod.CODE_USER_LOCKED
    assert (simulator.stats.login_attempts, simulator.stats.failed_logins, simulator.stats.logins) == (
        6,
        6,
        0,
    )
    simulator.unlock()
    assert api.login().status_code == 200


def test_successful_login_resets_failure_count(simulator: sim_mod.Simulator) -> None:
    """Failures only lock when consecutive: a good login in between starts the count again."""
    api = Api(simulator)
    api.bearer = api.token().json()["access_token"]
    for _ in range(4):
        api.login(password="wrong-password")
    assert api.login().status_code == 200
    for _ in range(4):
        api.login(password="wrong-password")
    assert api.login().status_code == 200


def test_caseless_user_names_share_one_failed_login_count(simulator: sim_mod.Simulator) -> None:
    """Every case of the user name counts toward one lock-out (one case-folded user), and logs in."""
    api = Api(simulator)
    api.bearer = api.token().json()["access_token"]
    base = simulator.config.username
    for name in (base.upper(), base.title(), base, base.upper()):
        body = {"username": name, "password": "wrong-password"}
        headers = {"Authorization": "Bearer " + api.bearer}
        api.http.post(api.base + "/m2m/v1/session/login", json=body, headers=headers)
    assert simulator.failed_login_streak(base.title()) == simulator.failed_login_streak() == 4
    right = {"username": base.upper(), "password": simulator.config.password.reveal()}
    ok = api.http.post(
        api.base + "/m2m/v1/session/login", json=right, headers={"Authorization": "Bearer " + api.bearer}
    )
    assert ok.status_code == 200
    assert (simulator.failed_login_streak(), simulator.peak_failed_login_streak(base.upper())) == (0, 4)


@pytest.mark.timing
def test_a_trickled_history_answer_arrives_whole_in_pieces(api: Api, simulator: sim_mod.Simulator) -> None:
    """Trickle writes the processed answer a chunk at a time: the body is intact, and it took the gaps."""
    simulator.seed(ACCOUNT, 150)  # a 202 block: a head GET serves it again, unacknowledged
    plain = api.history()
    simulator.faults.script("history", [sim_mod.Trickle(chunk=512, gap=0.02)])
    started = time.monotonic()
    trickled = api.history(stream=True)
    pieces = [chunk for chunk in trickled.raw.stream(65536) if chunk]
    elapsed = time.monotonic() - started
    assert b"".join(pieces) == plain.content
    expected = -(-len(plain.content) // 512)
    assert elapsed >= 0.02 * expected * 0.9
    assert simulator.stats.faults["trickle"] == 1


def test_expire_session_and_bearer(api: Api, simulator: sim_mod.Simulator) -> None:
    """expire_session() forces SessionToken.Expired, expire_bearer() the 401 fault; re-auth recovers."""
    assert api.history().status_code == 200
    simulator.faults.expire_session()
    assert api.history().json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED
    api.session = api.login().json()["sessionToken"]
    assert api.history().status_code == 200
    simulator.faults.expire_bearer()
    assert api.history().status_code == 401
    api.bearer = api.token().json()["access_token"]
    assert api.history().status_code == 200
    assert simulator.stats.logins == 2


def test_session_expires_after_idle_time_on_injected_clock(simulator: sim_mod.Simulator) -> None:
    """A session unused for longer than session_idle_timeout (20 min) is expired; use keeps it alive."""
    now = [1000.0]
    simulator.config.clock = lambda: now[0]
    api = Api(simulator).connect()
    now[0] += 1199
    assert api.history().status_code == 200
    now[0] += 1199
    assert api.history().status_code == 200
    now[0] += 1201
    assert api.history().json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED


def test_logout_ends_session(api: Api) -> None:
    """After logout the session token no longer works."""
    resp = api.http.post(api.base + "/m2m/v1/session/logout", headers=api.headers())
    assert resp.status_code == 200
    assert api.history().json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED


# --- history queue ----------------------------------------------------------


def test_paging_1000_messages_acknowledges_every_token_once(api: Api, simulator: sim_mod.Simulator) -> None:
    """1,000 messages come in 10 blocks (9 x 202 + Location, then 200); each token acks exactly once."""
    seeded = simulator.seed(ACCOUNT, 1000, seed=7)
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
        resp = api.history(next_of(resp))
    assert statuses == [202] * 9 + [200]
    assert received == seeded
    assert simulator.acknowledged(ACCOUNT) == seeded
    assert simulator.queued(ACCOUNT) == []
    acks = simulator.token_acks(ACCOUNT)
    assert len(acks) == 9
    assert set(acks.values()) == {1}
    assert simulator.stats.acks == 9


def test_location_is_relative_and_token_is_alphanumeric(api: Api, simulator: sim_mod.Simulator) -> None:
    """Location is /sms/{aname}/history?next=TOKEN relative to /api/m2m/v1, token 20 letters/digits."""
    simulator.seed(ACCOUNT, 150)
    resp = api.history()
    assert resp.status_code == 202
    match = re.fullmatch(r"/sms/0252012345-00001/history\?next=([A-Za-z0-9]{20})", resp.headers["Location"])
    assert match is not None


def test_get_without_next_returns_oldest_unacknowledged_block_again(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """Without next the same block (and token) comes back; nothing is dequeued."""
    seeded = simulator.seed(ACCOUNT, 250)
    first, again = api.history(), api.history()
    assert first.json() == again.json()
    assert first.json()["messages"] == seeded[:100]
    assert next_of(first) == next_of(again)
    assert simulator.acknowledged(ACCOUNT) == []
    second = api.history(next_of(first))
    assert second.json()["messages"] == seeded[100:200]
    assert simulator.acknowledged(ACCOUNT) == seeded[:100]
    assert api.history().json()["messages"] == seeded[100:200]


def test_block_size_is_configurable_at_run_time(api: Api, simulator: sim_mod.Simulator) -> None:
    """block_size changes the size of the next block served."""
    simulator.seed(ACCOUNT, 30)
    simulator.config.block_size = 10
    resp = api.history()
    assert resp.status_code == 202
    assert len(resp.json()["messages"]) == 10


def test_unknown_token_is_rejected(api: Api, simulator: sim_mod.Simulator) -> None:
    """A token the simulator never issued gets 400 InvalidNextToken and acks nothing."""
    simulator.seed(ACCOUNT, 150)
    resp = api.history("AAAAAAAAAAAAAAAAAAAA")
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN
    assert simulator.acknowledged(ACCOUNT) == []


def test_unknown_account_is_account_not_found(api: Api) -> None:
    """History for an account the simulator does not know gets 400 AccountNotFound."""
    resp = api.history(account="0000000000-99999")
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND


def test_reusable_token_replay_returns_same_next_block(api: Api, simulator: sim_mod.Simulator) -> None:
    """In reusable mode a replayed token returns the same follow-up block and token, acking nothing more."""
    seeded = simulator.seed(ACCOUNT, 300)
    t1 = next_of(api.history())
    b2 = api.history(t1)
    replay = api.history(t1)
    assert replay.status_code == 202
    assert replay.json() == b2.json()
    assert next_of(replay) == next_of(b2)
    assert simulator.acknowledged(ACCOUNT) == seeded[:100]
    assert simulator.token_acks(ACCOUNT)[t1] == 1
    assert simulator.stats.replays == 1
    final = api.history(next_of(b2))
    assert final.status_code == 200
    stale = api.history(t1)
    assert stale.status_code == 400
    assert stale.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN


def test_single_use_token_second_use_rejected(api: Api, simulator: sim_mod.Simulator) -> None:
    """In single_use mode the second use of a token gets InvalidNextToken."""
    simulator.config.token_mode = "single_use"
    simulator.seed(ACCOUNT, 300)
    t1 = next_of(api.history())
    assert api.history(t1).status_code == 202
    again = api.history(t1)
    assert again.status_code == 400
    assert again.json()["errorCode"] == sim_mod.CODE_INVALID_NEXT_TOKEN
    assert simulator.token_acks(ACCOUNT)[t1] == 1


def test_final_block_dequeued_on_delivery(api: Api, simulator: sim_mod.Simulator) -> None:
    """final_ack=on_delivery: a 200 block is gone from the queue once delivered."""
    seeded = simulator.seed(ACCOUNT, 40)
    resp = api.history()
    assert resp.status_code == 200
    assert resp.json() == {"hasMoreData": False, "messages": seeded}
    assert simulator.queued(ACCOUNT) == []
    assert simulator.acknowledged(ACCOUNT) == seeded
    assert api.history().json() == {"hasMoreData": False, "messages": []}


def test_final_block_dequeued_on_next_get(api: Api, simulator: sim_mod.Simulator) -> None:
    """final_ack=on_next_get: the 200 block stays queued until the next GET without next."""
    simulator.config.final_ack = "on_next_get"
    seeded = simulator.seed(ACCOUNT, 150)
    final = api.history(next_of(api.history()))
    assert final.status_code == 200
    assert final.json()["messages"] == seeded[100:]
    assert simulator.queued(ACCOUNT) == seeded[100:]
    late = sim_mod.seed_messages(3, seed=99)
    simulator.inject(ACCOUNT, late)
    after = api.history()
    assert after.json()["messages"] == late
    assert simulator.acknowledged(ACCOUNT) == seeded
    assert simulator.queued(ACCOUNT) == late


def test_inject_serves_malformed_messages_as_given(api: Api, simulator: sim_mod.Simulator) -> None:
    """inject() queues anything, even non-objects, and history serves it unchanged."""
    weird: list[Any] = [{"deviceIds": "nope"}, 42, None, {"message": "x" * 5, "extra": [1, 2]}]
    simulator.inject(ACCOUNT, weird)
    assert api.history().json()["messages"] == weird


# --- faults -----------------------------------------------------------------


def test_scripted_503_acks_nothing_and_is_counted(api: Api, simulator: sim_mod.Simulator) -> None:
    """A scripted 503 (HTML body) on the ack request leaves the queue intact; the retry acks once."""
    seeded = simulator.seed(ACCOUNT, 150)
    t1 = next_of(api.history())
    simulator.faults.script("history", [503, 502, 200])
    first = api.history(t1)
    assert first.status_code == 503
    assert first.headers["Content-Type"].startswith("text/html")
    assert api.history(t1).status_code == 502
    assert simulator.acknowledged(ACCOUNT) == []
    ok = api.history(t1)
    assert ok.status_code == 200
    assert ok.json()["messages"] == seeded[100:]
    assert simulator.token_acks(ACCOUNT) == {t1: 1}
    assert simulator.stats.faults["503"] == 1
    assert simulator.stats.faults["502"] == 1


def test_429_carries_retry_after_seconds_or_date(api: Api, simulator: sim_mod.Simulator) -> None:
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


def test_timeout_fault_holds_past_client_read_timeout(api: Api, simulator: sim_mod.Simulator) -> None:
    """A timeout fault never answers: the client's read timeout fires and nothing is acked."""
    simulator.seed(ACCOUNT, 150)
    t1 = next_of(api.history())
    simulator.faults.script("history", ["timeout"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.history(t1, timeout=(2, 0.3))
    assert simulator.stats.faults["timeout"] == 1
    assert simulator.acknowledged(ACCOUNT) == []
    assert api.history(t1).status_code == 200


@pytest.mark.timing
def test_stop_interrupts_held_timeout() -> None:
    """stop() returns promptly even while a request is held by a 30 s timeout fault."""
    sim = sim_mod.Simulator()
    sim.start()
    api = Api(sim).connect()
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


def test_lost_response_acks_but_reply_never_arrives(api: Api, simulator: sim_mod.Simulator) -> None:
    """lost_response processes the ack then drops the connection; a reusable replay gets the next block."""
    seeded = simulator.seed(ACCOUNT, 250)
    t1 = next_of(api.history())
    simulator.faults.script("history", ["lost_response"])
    with pytest.raises(requests.exceptions.ConnectionError):
        api.history(t1)
    assert simulator.acknowledged(ACCOUNT) == seeded[:100]
    replay = api.history(t1)
    assert replay.json()["messages"] == seeded[100:200]
    assert simulator.token_acks(ACCOUNT)[t1] == 1


def test_random_errors_are_seeded_counted_and_ack_nothing(api: Api, simulator: sim_mod.Simulator) -> None:
    """With an error rate every failed response is counted as a fault and none of them acks a block."""
    simulator.seed(ACCOUNT, 150)
    t1 = next_of(api.history())
    simulator.faults.reseed(3)
    simulator.faults.error_rate = 0.5
    statuses = [api.history("NOTATOKEN0000000000").status_code for _ in range(40)]
    failed = [s for s in statuses if s >= 500]
    assert 5 < len(failed) < 35
    assert sum(simulator.stats.faults.values()) == len(failed)
    assert all(s == 400 for s in statuses if s < 500)
    assert simulator.token_acks(ACCOUNT) == {t1: 0}


def test_raw_body_served_as_next_history_response(api: Api, simulator: sim_mod.Simulator) -> None:
    """next_history_raw serves the exact bytes once, without touching the queue."""
    seeded = simulator.seed(ACCOUNT, 5)
    simulator.faults.next_history_raw(b'{"hasMoreData": fal', status=200)
    resp = api.history()
    assert resp.content == b'{"hasMoreData": fal'
    assert simulator.queued(ACCOUNT) == seeded
    assert api.history().json()["messages"] == seeded
    assert simulator.stats.faults["raw"] == 1


def test_large_raw_body(api: Api, simulator: sim_mod.Simulator) -> None:
    """A 10 MB body is delivered completely."""
    big = b'{"hasMoreData":false,"messages":[' + b'"' + b"x" * (10 * 1024 * 1024) + b'"]}'
    simulator.faults.next_history_raw(big)
    assert len(api.history().content) == len(big)


def test_tampered_headers_foreign_location_and_missing_location(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """A Raw without body rewrites the real reply's headers: a foreign Location or none on a 202."""
    simulator.seed(ACCOUNT, 150)
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
def test_latency_is_applied_and_counted(api: Api, simulator: sim_mod.Simulator) -> None:
    """Latency delays responses and each delayed request is counted."""
    simulator.faults.latency = 0.05
    started = time.monotonic()
    api.history()
    assert time.monotonic() - started >= 0.05
    assert simulator.stats.faults["latency"] == 1


@pytest.mark.timing
def test_latency_includes_the_servers_own_work(api: Api, simulator: sim_mod.Simulator) -> None:
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


# --- send and callbacks -----------------------------------------------------


def test_send_is_validated_recorded_and_answered(api: Api, simulator: sim_mod.Simulator) -> None:
    """A valid send is recorded and gets a UUID requestId; invalid ones get 400 and are not recorded."""
    body = {
        "accountName": ACCOUNT,
        "smsMessage": "ping",
        "deviceIds": [{"id": "00123456789012", "kind": "imei"}],
    }
    resp = api.send(body)
    assert resp.status_code == 200
    assert re.fullmatch(r"[0-9a-f-]{36}", resp.json()["requestId"])
    assert simulator.sent == [body]
    missing = api.send({"accountName": ACCOUNT, "deviceIds": body["deviceIds"]})
    assert missing.json()["errorCode"] == sim_mod.CODE_INVALID_REQUEST
    too_long = api.send({**body, "smsMessage": "x" * 161})
    assert too_long.status_code == 400
    unknown = api.send({**body, "accountName": "0000000000-99999"})
    assert unknown.json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND
    assert simulator.sent == [body]
    assert simulator.stats.sends == 4


def test_start_callbacks(api: Api, simulator: sim_mod.Simulator) -> None:
    """startCallbacks answers {success: true} and is counted; unknown account -> AccountNotFound."""
    resp = api.start_callbacks()
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    assert api.start_callbacks("0000000000-99999").json()["errorCode"] == sim_mod.CODE_ACCOUNT_NOT_FOUND
    assert simulator.stats.start_callbacks == 2


# --- traffic, logs, standalone -----------------------------------------------


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


def test_request_log_never_holds_credentials(api: Api, simulator: sim_mod.Simulator) -> None:
    """The request log keeps method, path, query and status but no secret or token value."""
    simulator.seed(ACCOUNT, 150)
    api.history(next_of(api.history()))
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

    accounts = [ACCOUNT, "0252012345-00002"]
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
        api = Api(sim).connect()
        assert len(api.history().json()["messages"]) == 50
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_worker_env_is_what_the_worker_needs_and_inherit_drops_the_parents_settings(
    simulator: sim_mod.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """worker_env loads as settings for the simulator; inherit keeps PATH, drops SYNC_/THINGSPACE_/PG*."""
    env = simulator.worker_env(accounts=[ACCOUNT, "0252012345-00002"], database_url="postgresql://db/x")
    settings = config.load(env)
    assert settings.base_url == simulator.base_url
    assert [a.name for a in settings.accounts] == [ACCOUNT, "0252012345-00002"]
    assert settings.client_secret.reveal() == simulator.config.client_secret.reveal()
    assert simulator.worker_env(SYNC_ACCOUNTS="x")["SYNC_ACCOUNTS"] == "x"
    monkeypatch.setenv("THINGSPACE_USERNAME", "someone-real")
    monkeypatch.setenv("PGSERVICE", "prod")
    monkeypatch.setenv("SYNC_DATABASE_URL", "postgresql://prod/db")
    inherited = simulator.worker_env(inherit=True)
    assert inherited["PATH"] == os.environ["PATH"]
    assert inherited["THINGSPACE_USERNAME"] == simulator.config.username
    assert "PGSERVICE" not in inherited and "SYNC_DATABASE_URL" not in inherited


# --- hooks and requeue ---------------------------------------------------------


def test_drop_hook_closes_the_connection_unanswered_and_acknowledges_nothing(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.drop returning True drops that request unprocessed: no answer, no ack, counted as a fault."""
    simulator.seed(ACCOUNT, 250)
    token = next_of(api.history())
    seen: list[sim_mod.Request] = []

    def drop(request: sim_mod.Request) -> bool:
        seen.append(request)
        return request.kind == "history" and request.query.startswith("next=")

    simulator.hooks.drop = drop
    with pytest.raises(requests.ConnectionError):
        api.history(token)
    simulator.hooks.drop = None
    assert [(r.kind, r.account, r.query) for r in seen] == [("history", ACCOUNT, f"next={token}")]
    assert simulator.acknowledged(ACCOUNT) == [] and simulator.token_acks(ACCOUNT)[token] == 0
    assert simulator.stats.faults["dropped"] == 1
    assert api.history(token).status_code == 202


def test_rewrite_hook_replaces_the_answer_and_a_replaced_final_block_stays_queued(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.rewrite's Answer is what the client gets; a final block sent that way is not dequeued."""
    seeded = simulator.seed(ACCOUNT, 30)

    def rewrite(request: sim_mod.Request, answer: sim_mod.Answer) -> sim_mod.Answer | None:
        if request.kind != "history":
            return None
        return sim_mod.Answer(503, b"rewritten", answer.with_header("X-Hooked", "1").headers)

    simulator.hooks.rewrite = rewrite
    resp = api.history()
    assert (resp.status_code, resp.content, resp.headers["X-Hooked"]) == (503, b"rewritten", "1")
    assert simulator.queued(ACCOUNT) == seeded
    simulator.hooks.rewrite = lambda _request, _answer: None
    assert api.history().json()["messages"] == seeded
    assert simulator.queued(ACCOUNT) == []


def test_answered_hook_runs_after_every_answer_including_fault_replies(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """hooks.answered gets each request with the status it was answered with, scripted faults too."""
    simulator.seed(ACCOUNT, 10)
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
    api: Api, simulator: sim_mod.Simulator, final_ack: sim_mod.FinalAck
) -> None:
    """hooks.final_block gets a final block's messages once written (dequeued, or pending till a head GET)."""
    simulator.config.final_ack = final_ack
    seeded = simulator.seed(ACCOUNT, 150)
    finals: list[tuple[str, list[Any]]] = []
    simulator.hooks.final_block = lambda account, messages: finals.append((account, messages))
    api.history(next_of(api.history()))
    # queued() waits for the after-write step that calls the hook: read it first.
    assert simulator.queued(ACCOUNT) == ([] if final_ack == "on_delivery" else seeded[100:])
    assert finals == [(ACCOUNT, seeded[100:])]


def test_issued_hook_sees_every_bearer_and_session_token(simulator: sim_mod.Simulator) -> None:
    """hooks.issued is told each bearer and session token the moment the simulator issues it."""
    issued: list[tuple[str, str]] = []
    simulator.hooks.issued = lambda kind, token: issued.append((kind, token))
    api = Api(simulator).connect()
    assert issued == [("bearer", api.bearer), ("session", api.session)]


def test_requeue_serves_acknowledged_messages_again_ahead_of_the_queue(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """requeue(account, n) puts the last n acknowledged messages back at the head, once each."""
    seeded = simulator.seed(ACCOUNT, 250)
    token = next_of(api.history())
    api.history(token)
    assert simulator.acknowledged(ACCOUNT) == seeded[:100]
    assert simulator.requeue(ACCOUNT, 40) == seeded[60:100]
    assert simulator.acknowledged(ACCOUNT) == seeded[:60]
    assert simulator.queued(ACCOUNT) == seeded[60:]
    first = api.history()
    assert first.json()["messages"] == seeded[60:160]
    # The head block is renumbered: it has a token of its own, and the old one acknowledges nothing.
    assert next_of(first) != token
    # Acknowledging it returns the final block, dequeued on delivery.
    api.history(next_of(first))
    assert simulator.acknowledged(ACCOUNT) == seeded
    assert simulator.requeue(ACCOUNT, 1000) == seeded
    assert simulator.requeue("0000000000-99999", 5) == []


def test_requeue_keeps_a_pending_final_block_ahead_under_on_next_get(
    api: Api, simulator: sim_mod.Simulator
) -> None:
    """On requeue under on_next_get, a handed-out final block stays first; a head GET dequeues it."""
    simulator.config.final_ack = "on_next_get"
    seeded = simulator.seed(ACCOUNT, 150)
    api.history(next_of(api.history()))
    assert simulator.requeue(ACCOUNT, 30) == seeded[70:100]
    assert simulator.queued(ACCOUNT) == seeded[100:] + seeded[70:100]
    assert api.history().json()["messages"] == seeded[70:100]
    assert simulator.acknowledged(ACCOUNT) == seeded[:70] + seeded[100:]


def test_scripted_session_expiry_mid_paging_acks_nothing(api: Api, simulator: sim_mod.Simulator) -> None:
    """A scripted expire_session refuses exactly that ack request; after one re-login the token acks."""
    seeded = simulator.seed(ACCOUNT, 250)
    t1 = next_of(api.history())
    simulator.faults.script("history", ["expire_session"])
    refused = api.history(t1)
    assert refused.json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED
    assert simulator.acknowledged(ACCOUNT) == []
    api.session = api.login().json()["sessionToken"]
    assert api.history(t1).json()["messages"] == seeded[100:200]
    assert simulator.token_acks(ACCOUNT)[t1] == 1
    assert (simulator.stats.logins, simulator.stats.faults["expire_session"]) == (2, 1)


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
