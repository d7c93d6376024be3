"""The simulator's auth over real HTTP: OAuth bearer, M2M sessions, wrong passwords and lockout,
expiry on an injected clock."""

from __future__ import annotations

import re
import time

import pytest

from sync_worker import simulator as sim_mod
from tests.integration import sim_http

# The shared fixtures (tests/integration/sim_http.py), registered for this module.
api = sim_http.api


def test_a_fresh_token_has_the_whole_hour_whatever_the_clock_reads() -> None:
    """expires_in of a fresh token is 3600 also where (now + 3600.0) - now rounds below 3600 in floats."""
    now = 496.0907
    assert (now + 3600.0) - now < 3600  # the float arithmetic the countdown must not show
    with sim_mod.Simulator(sim_mod.SimConfig(clock=lambda: now)) as sim:
        assert sim_http.Api(sim).token().json()["expires_in"] == 3600


def test_token_endpoint_returns_bearer_for_valid_client(simulator: sim_mod.Simulator) -> None:
    """Client credentials with Basic auth get an access token of type bearer valid for an hour."""
    resp = sim_http.Api(simulator).token()
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert re.fullmatch(r"[A-Za-z0-9]{20,}", body["access_token"])
    assert simulator.stats.token_requests == 1


def test_token_endpoint_rejects_bad_client_with_oauth_error(simulator: sim_mod.Simulator) -> None:
    """A wrong client secret gets 401 with the OAuth error shape, no token."""
    resp = sim_http.Api(simulator).token(client_secret="wrong-secret")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "error_description" in resp.json()


def test_m2m_call_without_valid_bearer_gets_gateway_fault(api: sim_http.Api) -> None:
    """An unknown bearer token gets 401 with the gateway fault body (code 900901)."""
    api.bearer = "not-a-token"
    resp = api.history()
    assert resp.status_code == 401
    assert resp.json()["fault"]["code"] == 900901
    assert resp.json()["fault"]["message"] == "Invalid Credentials"


def test_m2m_call_without_session_gets_session_expired(api: sim_http.Api) -> None:
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
    api = sim_http.Api(simulator)
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
    api = sim_http.Api(simulator)
    api.bearer = api.token().json()["access_token"]
    for _ in range(4):
        api.login(password="wrong-password")
    assert api.login().status_code == 200
    for _ in range(4):
        api.login(password="wrong-password")
    assert api.login().status_code == 200


def test_caseless_user_names_share_one_failed_login_count(simulator: sim_mod.Simulator) -> None:
    """Every case of the user name counts toward one lock-out (one case-folded user), and logs in."""
    api = sim_http.Api(simulator)
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
def test_a_trickled_history_answer_arrives_whole_in_pieces(
    api: sim_http.Api, simulator: sim_mod.Simulator
) -> None:
    """Trickle writes the processed answer a chunk at a time: the body is intact, and it took the gaps."""
    simulator.seed(sim_http.ACCOUNT, 150)  # a 202 block: a head GET serves it again, unacknowledged
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


def test_expire_session_and_bearer(api: sim_http.Api, simulator: sim_mod.Simulator) -> None:
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
    api = sim_http.Api(simulator).connect()
    now[0] += 1199
    assert api.history().status_code == 200
    now[0] += 1199
    assert api.history().status_code == 200
    now[0] += 1201
    assert api.history().json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED


def test_logout_ends_session(api: sim_http.Api) -> None:
    """After logout the session token no longer works."""
    resp = api.http.post(api.base + "/m2m/v1/session/logout", headers=api.headers())
    assert resp.status_code == 200
    assert api.history().json()["errorCode"] == sim_mod.CODE_SESSION_EXPIRED
