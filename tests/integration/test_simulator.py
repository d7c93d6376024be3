"""The ThingSpace simulator over real HTTP, driven with plain ``requests`` (not our client)."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.parse
from typing import Any

import pytest
import requests

from sync_worker import simulator as sim_mod

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


def test_latency_is_applied_and_counted(api: Api, simulator: sim_mod.Simulator) -> None:
    """Latency delays responses and each delayed request is counted."""
    simulator.faults.latency = 0.05
    started = time.monotonic()
    api.history()
    assert time.monotonic() - started >= 0.05
    assert simulator.stats.faults["latency"] == 1


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


class _Announce(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def flush(self) -> None:
        self.ready.set()


def test_serve_runs_until_stopped_and_prints_base_url() -> None:
    """serve() prints the base URL and demo credentials, serves seeded traffic and returns on stop."""
    out, stop = _Announce(), threading.Event()
    thread = threading.Thread(
        target=sim_mod.serve,
        kwargs={"port": 0, "seed_messages": 120, "accounts": [ACCOUNT], "stop": stop, "out": out},
    )
    thread.start()
    try:
        assert out.ready.wait(10)
        text = out.getvalue()
        match = re.search(r"(http://127\.0\.0\.1:\d+/api)", text)
        assert match is not None
        assert "sim-password" in text
        token = requests.post(
            match.group(1) + "/ts/v1/oauth2/token",
            auth=("sim-client-id", "sim-client-secret"),
            data={"grant_type": "client_credentials"},
            timeout=5,
        )
        assert token.status_code == 200
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


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
