"""ThingSpaceClient's tokens and guarded login against the in-memory API: bearer and session tokens,
renewal, refusals, throttling, the guard, threads sharing one login."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
import requests
import requests.adapters

from sync_worker import auth, errors, retry, secret, transport
from tests.unit import client_fake

# The shared fixtures (tests/unit/client_fake.py), registered for this module.
clock = client_fake.clock
fake = client_fake.fake
make = client_fake.make


class Guard:
    """Records what the client tells a login guard; refuses every login when ``refuse``."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[str] = []
        self.fingerprints: set[str] = set()

    def begin(self, fingerprint: str, *, deadline: float | None = None) -> str:
        self.events.append("before")
        self.fingerprints.add(fingerprint)
        if self.refuse:
            raise errors.LoginGuardTrippedError("tripped")
        return f"attempt-{len(self.events)}"

    def finish(
        self, attempt: str, fingerprint: str, outcome: str, error: BaseException | None = None
    ) -> None:
        self.events.append(outcome)


def test_first_call_fetches_bearer_logs_in_and_sends_both_tokens(
    fake: client_fake.FakeApi, make: Any
) -> None:
    """Token, login and API call carry the documented auth, headers, timeouts and no redirects."""
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert page.status == 200 and page.next is None and len(page.messages) == 1
    (tok, tok_kw), (login, _), (api, api_kw) = fake.log
    assert tok.method == "POST" and tok.path_url == "/api/ts/v1/oauth2/token"
    basic = base64.b64encode(f"cid:{client_fake.CLIENT_SECRET}".encode()).decode()
    assert tok.headers["Authorization"] == f"Basic {basic}"
    assert tok.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert tok.body == "grant_type=client_credentials"
    assert login.headers["Content-Type"] == "application/json"
    assert login.path_url == "/api/m2m/v1/session/login"
    assert login.headers["Authorization"] == "Bearer bearer-1-tok"
    assert json.loads(login.body or b"") == {"username": "user", "password": client_fake.PASSWORD}
    assert api.method == "GET" and api.path_url == f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history"
    assert api.headers["Authorization"] == "Bearer bearer-1-tok"
    assert api.headers["VZ-M2M-Token"] == "sess-2-tok"
    assert api.headers["User-Agent"] == transport.USER_AGENT
    assert api_kw["timeout"] == (5.0, 60.0) and tok_kw["timeout"] == (5.0, 60.0)
    assert api_kw["verify"] not in (False, None, "")
    assert api_kw["cert"] is None and api_kw["stream"] is True  # read by the client, against its deadline


def test_tls_verification_cannot_be_switched_off_by_the_session(fake: client_fake.FakeApi, make: Any) -> None:
    """A caller's session with verify=False still gets certificate verification."""
    session = requests.Session()
    session.verify = False
    session.mount("https://", fake)
    make(session=session).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert all(kw["verify"] not in (False, None, "") for _, kw in fake.log)


def test_tokens_are_cached_between_calls(fake: client_fake.FakeApi, make: Any) -> None:
    """A second call reuses the bearer and session: no second token request or login."""
    c = make()
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 1
    assert len(fake.paths("/session/login")) == 1


def test_bearer_renewed_before_it_expires(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """The bearer is fetched again once expires_in minus the margin has passed."""
    c = make(token_expiry_margin=60.0)
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    clock.now += 3600 - 61
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 1
    clock.now += 2
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 2
    assert len(fake.paths("/session/login")) == 1


def test_session_expiry_relogs_in_once_and_replays(fake: client_fake.FakeApi, make: Any) -> None:
    """A SessionToken.Expired answer causes one new login and one replay with the new token."""
    expired = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}
    fake.api.extend([client_fake.reply(400, expired), client_fake.reply(200, client_fake.history(3))])
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(page.messages) == 3
    assert len(fake.paths("/session/login")) == 2
    api_calls = [r for r, _ in fake.log if "/history" in r.path_url]
    assert [r.headers["VZ-M2M-Token"] for r in api_calls] == ["sess-2-tok", "sess-3-tok"]


def test_session_expired_twice_is_an_auth_error(fake: client_fake.FakeApi, make: Any) -> None:
    """A replay that is also told the session expired raises AuthError after exactly one re-login."""
    expired = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}
    fake.api.extend([client_fake.reply(400, expired), client_fake.reply(400, expired)])
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "abc")
    assert info.value.error_code == "REQUEST_FAILED.SessionToken.Expired"
    assert not isinstance(info.value, errors.InvalidCursorError)
    assert len(fake.paths("/session/login")) == 2


def test_bearer_401_refreshes_once_and_replays(fake: client_fake.FakeApi, make: Any) -> None:
    """A gateway 401 fault drops the bearer, fetches a new one and replays once."""
    fault = {"fault": {"code": 900901, "message": "Invalid Credentials", "description": "d"}}
    fake.api.extend([client_fake.reply(401, fault), client_fake.reply(200, client_fake.history())])
    make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 2
    assert len(fake.paths("/session/login")) == 1


def test_second_401_is_an_auth_error(fake: client_fake.FakeApi, make: Any) -> None:
    """A 401 on the replay too raises AuthError with the fault code; only one refresh happened."""
    fault = {"fault": {"code": 900901, "message": "Invalid Credentials"}}
    fake.api.extend([client_fake.reply(401, fault), client_fake.reply(401, fault)])
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert info.value.error_code == "900901"
    assert info.value.error_message == "Invalid Credentials"
    assert len(fake.paths("/oauth2/token")) == 2


def test_refused_login_is_never_retried(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """A refused login raises LoginFailedError explaining the lockout; the default in-process guard
    then refuses to log in again with the same credentials."""
    bad = {"errorCode": "UnifiedWebService.REQUEST_FAILED.InvalidCredentials", "errorMessage": "bad"}
    fake.login.append(client_fake.reply(400, bad))
    c = make()
    with pytest.raises(errors.LoginFailedError) as info:
        c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert "five failed logins" in str(info.value)
    assert info.value.error_code == "REQUEST_FAILED.InvalidCredentials"
    with pytest.raises(errors.LoginGuardTrippedError):
        c.sms.start_queued_sms_delivery(client_fake.ACCOUNT)
    assert len(fake.paths("/session/login")) == 1
    assert clock.sleeps == []


def test_refusal_is_reported_to_the_guard(fake: client_fake.FakeApi, make: Any) -> None:
    """A 4xx on login is reported as refused, once, and the call is not retried."""
    fake.login.append(client_fake.reply(400, {"errorCode": "X.REQUEST_FAILED.InvalidCredentials"}))
    guard = Guard()
    with pytest.raises(errors.LoginFailedError):
        make(login_guard=guard).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert guard.events == ["before", "refused"]
    assert len(fake.paths("/session/login")) == 1


@pytest.mark.parametrize(
    "answer",
    [
        client_fake.reply(503, "<html>503</html>"),
        client_fake.reply(504, "<html><body>504 Gateway Time-out</body></html>", Content_Type="text/html"),
        client_fake.reply(200, "not json"),
        client_fake.reply(200, {"nothing": "here"}),
        requests.ConnectionError("connection reset"),
        requests.ReadTimeout("read timed out"),
    ],
    ids=["503", "html-504", "not-json", "no-token", "connection-lost", "timeout"],
)
def test_unknown_login_outcome_is_counted_and_not_retried(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock, answer: client_fake.Reply
) -> None:
    """A login whose outcome cannot be known is reported as unknown (counted) and never retried in-call."""
    fake.login.append(answer)
    guard = Guard()
    with pytest.raises(errors.ApiError):
        make(login_guard=guard).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert guard.events == ["before", "unknown"]
    assert len(fake.paths("/session/login")) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [429, 408])
def test_throttled_login_is_not_a_verdict_and_is_retried_after_retry_after(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock, status: int
) -> None:
    """A 429/408 on login is reported as throttled (not counted), Retry-After is waited, the login retried."""
    fake.login.append(client_fake.reply(status, "slow down", Retry_After="7"))
    guard = Guard()
    page = make(login_guard=guard).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert page.status == 200
    assert guard.events == ["before", "throttled", "before", "succeeded"]
    assert clock.sleeps == [7.0]
    assert len(fake.paths("/session/login")) == 2


def test_throttled_login_retry_after_date_is_measured_against_the_answers_date(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """A login 429 whose Retry-After is an HTTP-date waits its distance from the answer's Date header."""
    # The server's clock says 2001; ours says today: only the server's Date gives the right 30 s.
    fake.login.append(
        client_fake.reply(
            429,
            "slow down",
            Retry_After="Mon, 01 Jan 2001 00:00:30 GMT",
            Date="Mon, 01 Jan 2001 00:00:00 GMT",
        )
    )
    guard = Guard()
    page = make(login_guard=guard).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert page.status == 200
    assert guard.events == ["before", "throttled", "before", "succeeded"]
    assert clock.sleeps == [30.0]


def test_token_failure_is_not_a_login_attempt(fake: client_fake.FakeApi, make: Any) -> None:
    """An OAuth token request that fails never reaches the guard: no session login was tried."""
    fake.token.append(client_fake.reply(503, "<html>down</html>"))
    guard = Guard()
    with pytest.raises(errors.ApiTransientError):
        make(login_guard=guard, retry=retry.RetryPolicy(max_attempts=1)).sms.list_devices_sms_messages(
            client_fake.ACCOUNT
        )
    assert guard.events == []
    assert fake.paths("/session/login") == []


def test_credentials_are_read_at_each_login(fake: client_fake.FakeApi, make: Any) -> None:
    """With a credentials source, each login sends the credentials as they are then (a fixed secret file)."""
    current = ["first-password"]

    def creds() -> auth.Credentials:
        return auth.Credentials(
            "cid", secret.Secret(client_fake.CLIENT_SECRET), "user", secret.Secret(current[0])
        )

    guard = Guard()
    c = make(login_guard=guard, credentials=creds)
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    current[0] = "second-password"
    fake.api.append(client_fake.reply(400, {"errorCode": "UnifiedWebService.SessionToken.Expired"}))
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    logins = [json.loads(r.body or b"") for r, _ in fake.log if r.path_url.endswith("/session/login")]
    assert [x["password"] for x in logins] == ["first-password", "second-password"]
    assert len(guard.fingerprints) == 2


def test_guard_refusal_prevents_the_login(fake: client_fake.FakeApi, make: Any) -> None:
    """A tripped login guard stops the login before any login request is sent."""
    with pytest.raises(errors.LoginGuardTrippedError):
        make(login_guard=Guard(refuse=True)).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert fake.paths("/session/login") == []


def test_guard_told_about_success(fake: client_fake.FakeApi, make: Any) -> None:
    """A successful login is reported to the guard."""
    guard = Guard()
    make(login_guard=guard).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert guard.events == ["before", "succeeded"]


def test_refused_client_credentials_are_an_auth_error(fake: client_fake.FakeApi, make: Any) -> None:
    """An OAuth 401 invalid_client is a permanent AuthError carrying the OAuth error code."""
    fake.token.append(
        client_fake.reply(
            401, {"error": "invalid_client", "error_description": "Client authentication failed"}
        )
    )
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert info.value.error_code == "invalid_client"
    assert info.value.operation == "oauth_token"
    assert len(fake.log) == 1


def test_concurrent_threads_share_one_token_and_one_login(fake: client_fake.FakeApi, make: Any) -> None:
    """Eight threads starting cold cause exactly one token request and one login."""
    c = make()
    fake.api.extend([client_fake.reply(200, client_fake.history()) for _ in range(8)])
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert failures == []
    assert len(fake.paths("/oauth2/token")) == 1
    assert len(fake.paths("/session/login")) == 1
    assert len(fake.paths("/history")) == 8
