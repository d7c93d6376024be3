"""ThingSpaceClient against an in-memory transport: auth, replays, retries, errors, paging.

The transport is a requests adapter mounted on the client's session, so every
request goes through the real client code and only the socket is replaced.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from sync_worker import auth, client, errors, models, retry, secret, transport

BASE = "https://ts.example/api"
ACCOUNT = "0252012345-00001"
CLIENT_SECRET = "client-secret-XYZ-123"
PASSWORD = "hunter2-password-ABC"

Reply = tuple[int, Any, dict[str, str]] | BaseException


def reply(status: int = 200, body: Any = None, **headers: str) -> Reply:
    return (status, body, {k.replace("_", "-"): v for k, v in headers.items()})


def history(n: int = 1, more: bool = False) -> dict[str, Any]:
    msg = {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "m", "timestamp": "2020-01-01T00:00:00Z"}
    return {"messages": [msg] * n, "hasMoreData": more}


class FakeApi(requests.adapters.BaseAdapter):
    """Answers the token and login endpoints itself; API calls pop scripted replies."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.log: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []
        self.api: collections.deque[Reply] = collections.deque()
        self.login: collections.deque[Reply] = collections.deque()
        self.token: collections.deque[Reply] = collections.deque()
        self.issued = 0
        self.gate: threading.Event | None = None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        with self.lock:
            self.log.append((request, kwargs))
            path = request.path_url
            if path.endswith("/oauth2/token"):
                self.issued += 1
                step = (
                    self.token.popleft()
                    if self.token
                    else reply(
                        200,
                        {
                            "access_token": f"bearer-{self.issued}-tok",
                            "token_type": "Bearer",
                            "expires_in": 3600,
                        },
                    )
                )
            elif path.endswith("/session/login"):
                self.issued += 1
                step = (
                    self.login.popleft()
                    if self.login
                    else reply(200, {"sessionToken": f"sess-{self.issued}-tok"})
                )
            else:
                step = self.api.popleft() if self.api else reply(200, history())
        if self.gate is not None:
            self.gate.wait(5)
        if isinstance(step, BaseException):
            raise step
        status, body, headers = step
        resp = requests.Response()
        resp.status_code = status
        if isinstance(body, (dict, list)):
            resp._content = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        else:
            resp._content = (body or "").encode() if isinstance(body, str) or body is None else body
        resp.headers = CaseInsensitiveDict(headers)
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        pass

    def paths(self, suffix: str = "") -> list[str]:
        return [r.path_url for r, _ in self.log if r.path_url.split("?")[0].endswith(suffix)]


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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(fake: FakeApi, clock: Clock) -> Iterator[Callable[..., client.ThingSpaceClient]]:
    made: list[client.ThingSpaceClient] = []

    def build(**kw: Any) -> client.ThingSpaceClient:
        session = requests.Session()
        session.mount("https://", fake)
        args: dict[str, Any] = {
            "base_url": BASE,
            "client_id": "cid",
            "client_secret": secret.Secret(CLIENT_SECRET),
            "username": "user",
            "password": secret.Secret(PASSWORD),
            "retry": retry.RetryPolicy(
                sleep=clock.sleep, clock=clock, random=lambda: 0.0, initial_backoff=1.0
            ),
            "session": session,
            "clock": clock,
        }
        args.update(kw)
        c = client.ThingSpaceClient(client.ClientConfig(**args))
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


# --- auth -------------------------------------------------------------------


def test_first_call_fetches_bearer_logs_in_and_sends_both_tokens(fake: FakeApi, make: Any) -> None:
    """Token, login and API call carry the documented auth, headers, timeouts and no redirects."""
    page = make().sms.list_devices_sms_messages(ACCOUNT)
    assert page.status == 200 and page.next is None and len(page.messages) == 1
    (tok, tok_kw), (login, _), (api, api_kw) = fake.log
    assert tok.method == "POST" and tok.path_url == "/api/ts/v1/oauth2/token"
    basic = base64.b64encode(f"cid:{CLIENT_SECRET}".encode()).decode()
    assert tok.headers["Authorization"] == f"Basic {basic}"
    assert tok.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert tok.body == "grant_type=client_credentials"
    assert login.headers["Content-Type"] == "application/json"
    assert login.path_url == "/api/m2m/v1/session/login"
    assert login.headers["Authorization"] == "Bearer bearer-1-tok"
    assert json.loads(login.body or b"") == {"username": "user", "password": PASSWORD}
    assert api.method == "GET" and api.path_url == f"/api/m2m/v1/sms/{ACCOUNT}/history"
    assert api.headers["Authorization"] == "Bearer bearer-1-tok"
    assert api.headers["VZ-M2M-Token"] == "sess-2-tok"
    assert api.headers["User-Agent"] == transport.USER_AGENT
    assert api_kw["timeout"] == (5.0, 60.0) and tok_kw["timeout"] == (5.0, 60.0)
    assert api_kw["verify"] not in (False, None, "")
    assert api_kw["cert"] is None and api_kw["stream"] is True  # read by the client, against its deadline


def test_tls_verification_cannot_be_switched_off_by_the_session(fake: FakeApi, make: Any) -> None:
    """A caller's session with verify=False still gets certificate verification."""
    session = requests.Session()
    session.verify = False
    session.mount("https://", fake)
    make(session=session).sms.list_devices_sms_messages(ACCOUNT)
    assert all(kw["verify"] not in (False, None, "") for _, kw in fake.log)


def test_tokens_are_cached_between_calls(fake: FakeApi, make: Any) -> None:
    """A second call reuses the bearer and session: no second token request or login."""
    c = make()
    c.sms.list_devices_sms_messages(ACCOUNT)
    c.sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 1
    assert len(fake.paths("/session/login")) == 1


def test_bearer_renewed_before_it_expires(fake: FakeApi, make: Any, clock: Clock) -> None:
    """The bearer is fetched again once expires_in minus the margin has passed."""
    c = make(token_expiry_margin=60.0)
    c.sms.list_devices_sms_messages(ACCOUNT)
    clock.now += 3600 - 61
    c.sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 1
    clock.now += 2
    c.sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 2
    assert len(fake.paths("/session/login")) == 1


def test_session_expiry_relogs_in_once_and_replays(fake: FakeApi, make: Any) -> None:
    """A SessionToken.Expired answer causes one new login and one replay with the new token."""
    expired = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}
    fake.api.extend([reply(400, expired), reply(200, history(3))])
    page = make().sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 3
    assert len(fake.paths("/session/login")) == 2
    api_calls = [r for r, _ in fake.log if "/history" in r.path_url]
    assert [r.headers["VZ-M2M-Token"] for r in api_calls] == ["sess-2-tok", "sess-3-tok"]


def test_session_expired_twice_is_an_auth_error(fake: FakeApi, make: Any) -> None:
    """A replay that is also told the session expired raises AuthError after exactly one re-login."""
    expired = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}
    fake.api.extend([reply(400, expired), reply(400, expired)])
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT, "abc")
    assert info.value.error_code == "REQUEST_FAILED.SessionToken.Expired"
    assert not isinstance(info.value, errors.InvalidCursorError)
    assert len(fake.paths("/session/login")) == 2


def test_bearer_401_refreshes_once_and_replays(fake: FakeApi, make: Any) -> None:
    """A gateway 401 fault drops the bearer, fetches a new one and replays once."""
    fault = {"fault": {"code": 900901, "message": "Invalid Credentials", "description": "d"}}
    fake.api.extend([reply(401, fault), reply(200, history())])
    make().sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake.paths("/oauth2/token")) == 2
    assert len(fake.paths("/session/login")) == 1


def test_second_401_is_an_auth_error(fake: FakeApi, make: Any) -> None:
    """A 401 on the replay too raises AuthError with the fault code; only one refresh happened."""
    fault = {"fault": {"code": 900901, "message": "Invalid Credentials"}}
    fake.api.extend([reply(401, fault), reply(401, fault)])
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert info.value.error_code == "900901"
    assert info.value.error_message == "Invalid Credentials"
    assert len(fake.paths("/oauth2/token")) == 2


def test_refused_login_is_never_retried(fake: FakeApi, make: Any, clock: Clock) -> None:
    """A refused login raises LoginFailedError explaining the lockout; the default in-process guard
    then refuses to log in again with the same credentials."""
    bad = {"errorCode": "UnifiedWebService.REQUEST_FAILED.InvalidCredentials", "errorMessage": "bad"}
    fake.login.append(reply(400, bad))
    c = make()
    with pytest.raises(errors.LoginFailedError) as info:
        c.sms.list_devices_sms_messages(ACCOUNT)
    assert "five failed logins" in str(info.value)
    assert info.value.error_code == "REQUEST_FAILED.InvalidCredentials"
    with pytest.raises(errors.LoginGuardTrippedError):
        c.sms.start_queued_sms_delivery(ACCOUNT)
    assert len(fake.paths("/session/login")) == 1
    assert clock.sleeps == []


def test_refusal_is_reported_to_the_guard(fake: FakeApi, make: Any) -> None:
    """A 4xx on login is reported as refused, once, and the call is not retried."""
    fake.login.append(reply(400, {"errorCode": "X.REQUEST_FAILED.InvalidCredentials"}))
    guard = Guard()
    with pytest.raises(errors.LoginFailedError):
        make(login_guard=guard).sms.list_devices_sms_messages(ACCOUNT)
    assert guard.events == ["before", "refused"]
    assert len(fake.paths("/session/login")) == 1


@pytest.mark.parametrize(
    "answer",
    [
        reply(503, "<html>503</html>"),
        reply(504, "<html><body>504 Gateway Time-out</body></html>", Content_Type="text/html"),
        reply(200, "not json"),
        reply(200, {"nothing": "here"}),
        requests.ConnectionError("connection reset"),
        requests.ReadTimeout("read timed out"),
    ],
    ids=["503", "html-504", "not-json", "no-token", "connection-lost", "timeout"],
)
def test_unknown_login_outcome_is_counted_and_not_retried(
    fake: FakeApi, make: Any, clock: Clock, answer: Reply
) -> None:
    """A login whose outcome cannot be known is reported as unknown (counted) and never retried in-call."""
    fake.login.append(answer)
    guard = Guard()
    with pytest.raises(errors.ApiError):
        make(login_guard=guard).sms.list_devices_sms_messages(ACCOUNT)
    assert guard.events == ["before", "unknown"]
    assert len(fake.paths("/session/login")) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [429, 408])
def test_throttled_login_is_not_a_verdict_and_is_retried_after_retry_after(
    fake: FakeApi, make: Any, clock: Clock, status: int
) -> None:
    """A 429/408 on login is reported as throttled (not counted), Retry-After is waited, the login retried."""
    fake.login.append(reply(status, "slow down", Retry_After="7"))
    guard = Guard()
    page = make(login_guard=guard).sms.list_devices_sms_messages(ACCOUNT)
    assert page.status == 200
    assert guard.events == ["before", "throttled", "before", "succeeded"]
    assert clock.sleeps == [7.0]
    assert len(fake.paths("/session/login")) == 2


def test_throttled_login_retry_after_date_is_measured_against_the_answers_date(
    fake: FakeApi, make: Any, clock: Clock
) -> None:
    """A login 429 whose Retry-After is an HTTP-date waits its distance from the answer's Date header."""
    # The server's clock says 2001; ours says today: only the server's Date gives the right 30 s.
    fake.login.append(
        reply(
            429,
            "slow down",
            Retry_After="Mon, 01 Jan 2001 00:00:30 GMT",
            Date="Mon, 01 Jan 2001 00:00:00 GMT",
        )
    )
    guard = Guard()
    page = make(login_guard=guard).sms.list_devices_sms_messages(ACCOUNT)
    assert page.status == 200
    assert guard.events == ["before", "throttled", "before", "succeeded"]
    assert clock.sleeps == [30.0]


def test_token_failure_is_not_a_login_attempt(fake: FakeApi, make: Any) -> None:
    """An OAuth token request that fails never reaches the guard: no session login was tried."""
    fake.token.append(reply(503, "<html>down</html>"))
    guard = Guard()
    with pytest.raises(errors.ApiTransientError):
        make(login_guard=guard, retry=retry.RetryPolicy(max_attempts=1)).sms.list_devices_sms_messages(
            ACCOUNT
        )
    assert guard.events == []
    assert fake.paths("/session/login") == []


def test_credentials_are_read_at_each_login(fake: FakeApi, make: Any) -> None:
    """With a credentials source, each login sends the credentials as they are then (a fixed secret file)."""
    current = ["first-password"]

    def creds() -> auth.Credentials:
        return auth.Credentials("cid", secret.Secret(CLIENT_SECRET), "user", secret.Secret(current[0]))

    guard = Guard()
    c = make(login_guard=guard, credentials=creds)
    c.sms.list_devices_sms_messages(ACCOUNT)
    current[0] = "second-password"
    fake.api.append(reply(400, {"errorCode": "UnifiedWebService.SessionToken.Expired"}))
    c.sms.list_devices_sms_messages(ACCOUNT)
    logins = [json.loads(r.body or b"") for r, _ in fake.log if r.path_url.endswith("/session/login")]
    assert [x["password"] for x in logins] == ["first-password", "second-password"]
    assert len(guard.fingerprints) == 2


def test_guard_refusal_prevents_the_login(fake: FakeApi, make: Any) -> None:
    """A tripped login guard stops the login before any login request is sent."""
    with pytest.raises(errors.LoginGuardTrippedError):
        make(login_guard=Guard(refuse=True)).sms.list_devices_sms_messages(ACCOUNT)
    assert fake.paths("/session/login") == []


def test_guard_told_about_success(fake: FakeApi, make: Any) -> None:
    """A successful login is reported to the guard."""
    guard = Guard()
    make(login_guard=guard).sms.list_devices_sms_messages(ACCOUNT)
    assert guard.events == ["before", "succeeded"]


def test_refused_client_credentials_are_an_auth_error(fake: FakeApi, make: Any) -> None:
    """An OAuth 401 invalid_client is a permanent AuthError carrying the OAuth error code."""
    fake.token.append(
        reply(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
    )
    with pytest.raises(errors.AuthError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert info.value.error_code == "invalid_client"
    assert info.value.operation == "oauth_token"
    assert len(fake.log) == 1


def test_concurrent_threads_share_one_token_and_one_login(fake: FakeApi, make: Any) -> None:
    """Eight threads starting cold cause exactly one token request and one login."""
    c = make()
    fake.api.extend([reply(200, history()) for _ in range(8)])
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            c.sms.list_devices_sms_messages(ACCOUNT)
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


# --- retries ----------------------------------------------------------------


def test_get_retried_on_503_html_page(fake: FakeApi, make: Any, clock: Clock) -> None:
    """A 503 HTML page on a GET is transient: retried after the backoff, then succeeds."""
    fake.api.extend([reply(503, "<html>down</html>", Content_Type="text/html"), reply(200, history())])
    make().sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake.paths("/history")) == 2
    assert clock.sleeps == [1.0]


def test_post_send_not_retried_on_503(fake: FakeApi, make: Any, clock: Clock) -> None:
    """send_sms_to_device is never retried: one 503 raises ApiTransientError at once."""
    fake.api.append(reply(503, "<html>down</html>"))
    req = models.SMSSendRequest(ACCOUNT, "hi", (models.DeviceId("123", "imei"),))
    with pytest.raises(errors.ApiTransientError) as info:
        make().sms.send_sms_to_device(req)
    assert info.value.status == 503 and info.value.error_message is None
    assert len(fake.paths("/m2m/v1/sms")) == 1
    assert clock.sleeps == []


def test_put_retried_on_timeout(fake: FakeApi, make: Any, clock: Clock) -> None:
    """startCallbacks (PUT) is retried after a read timeout."""
    fake.api.extend([requests.ReadTimeout("slow"), reply(200, {"success": True})])
    result = make().sms.start_queued_sms_delivery(ACCOUNT)
    assert result.success is True
    assert len(fake.paths("/startCallbacks")) == 2


def test_connection_errors_exhaust_attempts(fake: FakeApi, make: Any, clock: Clock) -> None:
    """Dropped connections are retried max_attempts times, then raised with status None."""
    attempts = retry.DEFAULT_MAX_ATTEMPTS
    fake.api.extend([requests.ConnectionError("refused") for _ in range(attempts)])
    with pytest.raises(errors.ApiTransientError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert info.value.status is None
    assert len(fake.paths("/history")) == attempts
    assert clock.sleeps == [2.0**n for n in range(attempts - 1)]  # 1, 2, 4, 8: doubling from 1 s


def test_429_retry_after_is_waited(fake: FakeApi, make: Any, clock: Clock) -> None:
    """A 429 with Retry-After: 7 waits exactly 7 seconds through the injected sleep."""
    fake.api.extend([reply(429, "slow down", Retry_After="7"), reply(200, history())])
    make().sms.list_devices_sms_messages(ACCOUNT)
    assert clock.sleeps == [7.0]


def test_retry_after_http_date_is_measured_against_the_answers_date(
    fake: FakeApi, make: Any, clock: Clock
) -> None:
    """A Retry-After HTTP-date waits its distance from the answer's Date header, whatever the local clock."""
    # The server's clock says 2001; ours says today: only the server's Date gives the right 30 s.
    fake.api.extend(
        [
            reply(
                429,
                "slow down",
                Retry_After="Mon, 01 Jan 2001 00:00:30 GMT",
                Date="Mon, 01 Jan 2001 00:00:00 GMT",
            ),
            reply(200, history()),
        ]
    )
    make().sms.list_devices_sms_messages(ACCOUNT)
    assert clock.sleeps == [30.0]


def test_retry_after_above_cap_is_raised(fake: FakeApi, make: Any, clock: Clock) -> None:
    """A Retry-After beyond max_retry_after is not slept through: RateLimitedError is raised."""
    fake.api.append(reply(429, "", Retry_After="600"))
    policy = retry.RetryPolicy(sleep=clock.sleep, clock=clock, max_retry_after=60)
    with pytest.raises(errors.RateLimitedError) as info:
        make(retry=policy).sms.list_devices_sms_messages(ACCOUNT)
    assert info.value.retry_after == 600.0
    assert clock.sleeps == []


def test_deadline_stops_retrying(fake: FakeApi, make: Any, clock: Clock) -> None:
    """With the deadline nearer than the backoff, the 502 is raised without sleeping."""
    fake.api.append(reply(502, "bad gateway"))
    with pytest.raises(errors.ApiTransientError):
        make().sms.list_devices_sms_messages(ACCOUNT, deadline=clock.now + 0.5)
    assert clock.sleeps == []


def test_observer_counts_requests_and_retries(fake: FakeApi, make: Any) -> None:
    """The observer sees every HTTP exchange and every retry with its reason and wait."""
    seen: list[tuple[str, Any]] = []

    class Obs:
        def on_request(self, operation: str, status: int | None, seconds: float) -> None:
            seen.append(("request", (operation, status)))

        def on_retry(self, operation: str, reason: str, wait: float) -> None:
            seen.append(("retry", (operation, reason, wait)))

    fake.api.extend([reply(500, {"errorCode": "X.UNEXPECTED.Y"}), reply(200, history())])
    make(observer=Obs()).sms.list_devices_sms_messages(ACCOUNT)
    op = "list_devices_sms_messages"
    assert seen == [
        ("request", ("oauth_token", 200)),
        ("request", ("session_login", 200)),
        ("request", (op, 500)),
        ("retry", (op, "http_500", 1.0)),
        ("request", (op, 200)),
    ]


# --- error mapping ----------------------------------------------------------


def test_m2m_4xx_is_permanent_with_code(fake: FakeApi, make: Any) -> None:
    """An M2M 400 raises ApiPermanentError with the prefix-less code and the message."""
    fake.api.append(
        reply(400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.AccountNotFound", "errorMessage": "nf"})
    )
    with pytest.raises(errors.ApiPermanentError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert type(info.value) is errors.ApiPermanentError
    assert (info.value.status, info.value.error_code, info.value.error_message) == (
        400,
        "REQUEST_FAILED.AccountNotFound",
        "nf",
    )


def test_rejected_next_token_is_invalid_cursor(fake: FakeApi, make: Any) -> None:
    """A 4xx on a history GET that sent next raises InvalidCursorError."""
    fake.api.append(reply(400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.InvalidNextToken"}))
    with pytest.raises(errors.InvalidCursorError):
        make().sms.list_devices_sms_messages(ACCOUNT, "abc123")


def test_429_on_cursor_is_rate_limit_not_invalid_cursor(fake: FakeApi, make: Any) -> None:
    """A 429 with next is rate limiting (retried), never InvalidCursorError."""
    fake.api.extend([reply(429, "<html>busy</html>"), reply(200, history())])
    page = make().sms.list_devices_sms_messages(ACCOUNT, "abc123")
    assert page.request_next == "abc123"
    assert len(fake.paths("/history")) == 2


_ATTEMPTS = retry.DEFAULT_MAX_ATTEMPTS  # the default policy's attempts


@pytest.mark.parametrize("body", ["not json", "[1,2]", '{"messages": 5}'])
def test_malformed_2xx_is_retried_then_a_format_error(
    fake: FakeApi, make: Any, clock: Clock, body: str
) -> None:
    """A 200 whose body stays unreadable is re-sent up to max_attempts, then raises ResponseFormatError."""
    fake.api.extend([reply(200, body, Content_Type="application/json")] * _ATTEMPTS)
    with pytest.raises(errors.ResponseFormatError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert info.value.status == 200
    assert len(fake.paths("/history")) == _ATTEMPTS
    assert clock.sleeps == [2.0**n for n in range(_ATTEMPTS - 1)]


_BAD_BODIES = {
    "not_json": b"<html>Service Unavailable</html>",
    "messages_not_a_list": b'{"hasMoreData": true, "messages": {"0": 1}}',
    "has_more_not_bool": b'{"hasMoreData": "yes", "messages": []}',
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
    "invalid_utf8_envelope": b"\xff\xfe{}",
    "cut_short": b'{"hasMoreData": true, "messages": [{"message": "hi", "timest',
    "empty": b"",
    # Well-formed JSON that is still not the block (the acknowledgement gate refuses each).
    "no_messages": b'{"hasMoreData": true}',
    "renamed_messages": b'{"hasMoreData": true, "smsMessages": [{"message": "hi"}]}',
    "empty_object": b"{}",
    "duplicate_messages": b'{"hasMoreData": true, "messages": [{"message": "hi"}], "messages": []}',
    "duplicate_has_more": b'{"hasMoreData": true, "messages": [{"message": "hi"}], "hasMoreData": false}',
    "no_has_more": b'{"messages": [{"message": "hi"}]}',
    "has_more_null": b'{"hasMoreData": null, "messages": [{"message": "hi"}]}',
}


@pytest.mark.parametrize("case", list(_BAD_BODIES))
def test_unreadable_202_body_with_valid_location_is_a_malformed_block_after_every_attempt(
    fake: FakeApi, make: Any, case: str
) -> None:
    """A 202 whose bad body (safe Location) survives every attempt: MalformedBlockError, both tokens."""
    body = _BAD_BODIES[case]
    fake.api.extend([reply(202, body, Location=f"/sms/{ACCOUNT}/history?next=Tok2")] * _ATTEMPTS)
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT, "Tok1")
    exc = info.value
    assert isinstance(exc, errors.ResponseFormatError)
    assert (exc.status, exc.next_token, exc.request_next) == (202, "Tok2", "Tok1")
    assert exc.body == body and exc.body_size == len(body) and not exc.body_truncated
    assert exc.body_sha256 == hashlib.sha256(body).hexdigest()
    assert exc.problem and exc.problem in str(exc)
    # The body is data: never in the message, the repr or the args.
    if body:
        assert body[:20].decode("latin-1") not in str(exc) + repr(exc)
    # Every attempt re-sent the same request; the unreadable answer's token was never followed.
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{ACCOUNT}/history?next=Tok1"] * _ATTEMPTS


@pytest.mark.parametrize("case", list(_BAD_BODIES))
@pytest.mark.parametrize("status", [200, 202])
def test_one_unreadable_answer_is_retried_with_the_same_token(
    fake: FakeApi, make: Any, clock: Clock, case: str, status: int
) -> None:
    """An unreadable answer once is a transient fault: the same request again, its Location never used."""
    fake.api.extend(
        [
            reply(status, _BAD_BODIES[case], Location=f"/sms/{ACCOUNT}/history?next=Bad9"),
            reply(202, history(1, True), Location=f"/sms/{ACCOUNT}/history?next=Good2"),
        ]
    )
    page = make().sms.list_devices_sms_messages(ACCOUNT, "Tok1")
    assert (page.status, page.next, page.request_next) == (202, "Good2", "Tok1")
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{ACCOUNT}/history?next=Tok1"] * 2
    assert clock.sleeps == [1.0]


def test_202_without_body_or_location_is_retried(fake: FakeApi, make: Any) -> None:
    """A bare 202 (no body, no Location) is unreadable, so it is retried rather than refused outright."""
    fake.api.extend([reply(202, b""), reply(200, history())])
    page = make().sms.list_devices_sms_messages(ACCOUNT)
    assert page.is_final and len(fake.paths("/history")) == 2


def test_unreadable_answer_cut_short_by_the_deadline_stays_transient(
    fake: FakeApi, make: Any, clock: Clock
) -> None:
    """When the run budget ends the attempts early, the error is transient and nothing is quarantinable."""
    fake.api.extend([reply(202, b"not json", Location=f"/sms/{ACCOUNT}/history?next=Tok2")] * _ATTEMPTS)
    with pytest.raises(errors.UnreadableAnswerError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT, "Tok1", deadline=clock.now + 1.5)
    assert isinstance(info.value, errors.TransientError)
    assert not isinstance(info.value, errors.MalformedBlockError)
    assert info.value.attempts == 2 and len(fake.paths("/history")) == 2


def test_unreadable_final_200_is_a_malformed_block_without_next(fake: FakeApi, make: Any) -> None:
    """A 200 whose bad body survives every attempt raises MalformedBlockError with next_token None."""
    fake.api.extend([reply(200, b"null")] * _ATTEMPTS)
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert (info.value.status, info.value.next_token, info.value.request_next) == (200, None, None)
    assert info.value.body == b"null"


def test_unreadable_body_with_bad_location_stays_unsafe_location(fake: FakeApi, make: Any) -> None:
    """A bad body under a foreign Location ends, after the attempts, as UnsafeLocationError."""
    fake.api.extend([reply(202, b"not json", Location="https://evil.example/api/x?next=Tok2")] * _ATTEMPTS)
    with pytest.raises(errors.UnsafeLocationError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert not isinstance(info.value, errors.MalformedBlockError)
    assert len(fake.paths("/history")) == _ATTEMPTS


def test_malformed_block_keeps_at_most_the_cap() -> None:
    """A body over MAX_KEPT_BODY keeps its first bytes, its full size and the digest of the whole body."""
    body = b"x" * (errors.MalformedBlockError.MAX_KEPT_BODY + 10)
    exc = errors.MalformedBlockError("m", body=body, problem="p", next_token=None, request_next=None)
    assert len(exc.body) == errors.MalformedBlockError.MAX_KEPT_BODY
    assert exc.body_size == len(body) and exc.body_truncated
    assert exc.body_sha256 == hashlib.sha256(body).hexdigest()


def test_redirect_is_not_followed(fake: FakeApi, make: Any) -> None:
    """A 302 is not followed (it would carry both tokens): it is a format error."""
    fake.api.append(reply(302, "", Location="https://evil.example/steal"))
    with pytest.raises(errors.ResponseFormatError):
        make().sms.list_devices_sms_messages(ACCOUNT)
    assert all("evil" not in (r.url or "") for r, _ in fake.log)


# --- paging -----------------------------------------------------------------


def test_202_location_gives_next_and_request_next_is_kept(fake: FakeApi, make: Any) -> None:
    """A 202 page carries the Location token as next, and remembers the token it was asked with."""
    fake.api.append(reply(202, history(100, True), Location=f"/sms/{ACCOUNT}/history?next=Tok2"))
    page = make().sms.list_devices_sms_messages(ACCOUNT, "Tok1")
    assert (page.status, page.next, page.request_next, page.has_more_data) == (202, "Tok2", "Tok1", True)
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{ACCOUNT}/history?next=Tok1"]


def test_202_without_location_is_unsafe(fake: FakeApi, make: Any) -> None:
    """A 202 with no Location cannot be paged: UnsafeLocationError."""
    fake.api.append(reply(202, history(1, True)))
    with pytest.raises(errors.UnsafeLocationError):
        make().sms.list_devices_sms_messages(ACCOUNT)


@pytest.mark.parametrize(
    ("status", "body", "token"),
    [
        (202, history(1, False), "Tok2"),
        (202, history(0, True), "Tok2"),
        (200, history(1, True), None),
    ],
    ids=["202_has_more_false", "202_no_messages", "200_has_more_true"],
)
def test_status_has_more_data_disagreement_is_unreadable(
    fake: FakeApi, make: Any, status: int, body: dict[str, Any], token: str | None
) -> None:
    """Status, hasMoreData and message count disagreeing: retried, then a MalformedBlockError; never paged."""
    fake.api.extend([reply(status, body, Location=f"/sms/{ACCOUNT}/history?next=Tok2")] * _ATTEMPTS)
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(ACCOUNT, "Tok1")
    assert (info.value.status, info.value.next_token) == (status, token)
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{ACCOUNT}/history?next=Tok1"] * _ATTEMPTS


def test_unknown_top_level_member_is_read_past_and_counted(fake: FakeApi, make: Any) -> None:
    """An extra top-level member does not make the block unreadable; the observer counts it by name."""
    seen: list[str] = []

    class Obs:
        def on_request(self, operation: str, status: int | None, seconds: float) -> None:
            pass

        def on_retry(self, operation: str, reason: str, wait: float) -> None:
            pass

        def on_unknown_member(self, member: str) -> None:
            seen.append(member)

    body = {**history(2, True), "requestId": "r1"}
    fake.api.extend([reply(202, body, Location=f"/sms/{ACCOUNT}/history?next=Tok2")] * 2)
    c = make(observer=Obs())
    page = c.sms.list_devices_sms_messages(ACCOUNT)
    c.sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 2 and page.next == "Tok2"
    assert seen == ["requestId", "requestId"]


def test_iterator_sends_no_next_token_for_a_block_not_settled(fake: FakeApi, make: Any) -> None:
    """Asking for block N+1 before block N was committed or quarantined: refused, nothing acknowledged."""
    fake.api.extend([reply(202, history(2, True), Location="/sms/a/history?next=t1"), reply(200, history(1))])
    blocks = make().sms.iter_history_blocks(ACCOUNT)
    first = next(blocks)
    with pytest.raises(errors.AcknowledgementRefusedError):
        next(blocks)
    assert first.ticket is not None and first.ticket.settled is None
    assert len(fake.paths("/history")) == 1


def test_iterator_is_lazy_and_stops_after_final(fake: FakeApi, make: Any) -> None:
    """Block N+1 is requested only when asked for; iteration ends after the 200 block."""
    fake.api.extend(
        [
            reply(202, history(2, True), Location="/sms/a/history?next=t1"),
            reply(202, history(2, True), Location="/sms/a/history?next=t2"),
            reply(200, history(1)),
        ]
    )
    blocks = make().sms.iter_history_blocks(ACCOUNT)
    first = next(blocks)
    assert first.next == "t1" and len(fake.paths("/history")) == 1
    assert first.ticket is not None
    first.ticket.committed(len(first.messages))  # what store.commit_block does once committed
    rest = []
    for page in blocks:
        assert page.ticket is not None
        page.ticket.committed(len(page.messages))
        rest.append(page)
    assert [p.request_next for p in rest] == ["t1", "t2"]
    assert rest[-1].is_final
    assert fake.paths("/history")[1:] == [
        f"/api/m2m/v1/sms/{ACCOUNT}/history?next=t1",
        f"/api/m2m/v1/sms/{ACCOUNT}/history?next=t2",
    ]


# --- validation and configuration ------------------------------------------


def test_invalid_send_request_sends_nothing(fake: FakeApi, make: Any) -> None:
    """An SMS over the 7-bit limit raises ValidationError before any HTTP request."""
    req = models.SMSSendRequest(ACCOUNT, "x" * 161, (models.DeviceId("123", "imei"),))
    with pytest.raises(errors.ValidationError):
        make().sms.send_sms_to_device(req)
    assert fake.log == []


@pytest.mark.parametrize(
    "account", ["", "ab", "../../admin", "acct?next=x", "a" * 33, "acct%00", "0252012345-00001\n"]
)
def test_invalid_account_name_sends_nothing(fake: FakeApi, make: Any, account: str) -> None:
    """A malformed account name raises ValidationError before any HTTP request."""
    with pytest.raises(errors.ValidationError):
        make().sms.list_devices_sms_messages(account)
    assert fake.log == []


def test_send_posts_the_wire_body(fake: FakeApi, make: Any) -> None:
    """send_sms_to_device POSTs the camelCase body and returns the requestId."""
    fake.api.append(reply(200, {"requestId": "r-1"}))
    req = models.SMSSendRequest(ACCOUNT, "hi", (models.DeviceId("00123", "imei"),))
    assert make().sms.send_sms_to_device(req).request_id == "r-1"
    sent = fake.log[-1][0]
    assert sent.method == "POST" and sent.path_url == "/api/m2m/v1/sms"
    assert json.loads(sent.body or b"") == req.to_wire()


def _cfg(base_url: str, insecure: bool = False) -> client.ClientConfig:
    return client.ClientConfig(
        base_url=base_url,
        client_id="cid",
        client_secret=secret.Secret(CLIENT_SECRET),
        username="user",
        password=secret.Secret(PASSWORD),
        allow_insecure_loopback=insecure,
    )


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("http://127.0.0.1:8080/api", False),
        ("http://example.com/api", True),
        ("http://10.0.0.1/api", True),
        ("ftp://127.0.0.1/api", True),
        ("https://user:pw@host/api", False),
        ("https:///api", False),
    ],
)
def test_unsafe_base_urls_are_refused(url: str, insecure: bool) -> None:
    """http:// is refused unless explicitly allowed for a loopback host; odd URLs are refused."""
    with pytest.raises(errors.ConfigError):
        client.ThingSpaceClient(_cfg(url, insecure))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/api", "http://127.9.9.9/api", "http://[::1]:8/api", "http://localhost/api"]
)
def test_loopback_http_allowed_with_flag_and_warns(url: str, capsys: Any, caplog: Any) -> None:
    """http:// on a loopback host works with the flag, and a warning is logged."""
    with caplog.at_level(logging.WARNING):
        client.ThingSpaceClient(_cfg(url, True)).close()
    out = capsys.readouterr()
    assert "insecure" in (out.out + out.err + caplog.text)


def test_config_and_client_repr_hide_secrets() -> None:
    """repr of the config and of the client never shows the client secret or password."""
    cfg = _cfg("https://ts.example/api")
    c = client.ThingSpaceClient(cfg)
    for text in (repr(cfg), repr(c), str(cfg)):
        assert CLIENT_SECRET not in text and PASSWORD not in text
    c.close()


def test_errors_never_contain_tokens_or_passwords(fake: FakeApi, make: Any) -> None:
    """Error text from every failure path holds no password, client secret or issued token."""
    fake.api.extend([reply(401, {"fault": {"code": 900901}}), reply(401, {"fault": {"code": 900901}})])
    c = make()
    texts: list[str] = []
    with pytest.raises(errors.AuthError) as info:
        c.sms.list_devices_sms_messages(ACCOUNT)
    texts.append(str(info.value))
    texts.append(repr(info.value))
    fake.login.append(reply(400, {"errorCode": "A.REQUEST_FAILED.InvalidCredentials"}))
    c2 = make()
    with pytest.raises(errors.LoginFailedError) as info2:
        c2.sms.list_devices_sms_messages(ACCOUNT)
    texts += [str(info2.value), repr(info2.value), repr(c2), repr(c2._session), repr(c2._bearer)]
    for text in texts:
        for value in (PASSWORD, CLIENT_SECRET, "bearer-1-tok", "sess-2-tok", "bearer-3-tok"):
            assert value not in text
    assert "bearer-1-tok" in secret.known_values()


def test_environment_proxies_and_ca_bundle_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy and CA-bundle variables still apply (read at start, not per request); ~/.netrc never does."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "other.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/private-ca.pem")
    cfg = client.ClientConfig(
        base_url=BASE,
        client_id="cid",
        client_secret=secret.Secret(CLIENT_SECRET),
        username="user",
        password=secret.Secret(PASSWORD),
    )
    with client.ThingSpaceClient(cfg) as api:
        http = api._transport.http
        assert http.proxies.get("https") == "http://proxy.internal:3128"
        assert http.verify == "/etc/ssl/private-ca.pem" and api._transport.verify == "/etc/ssl/private-ca.pem"
        assert http.trust_env is False
    monkeypatch.setenv("NO_PROXY", "ts.example")
    with client.ThingSpaceClient(cfg) as api:
        assert "https" not in api._transport.http.proxies


def test_headers_follow_the_session_and_tokens_and_bad_ones_are_refused_every_time(
    fake: FakeApi, make: Any
) -> None:
    """Checked headers are reused, yet a changed session header or token is sent; a bad one always fails."""
    session = requests.Session()
    session.mount("https://", fake)
    api = make(session=session)
    api.sms.list_devices_sms_messages(ACCOUNT)
    session.headers["X-Trace"] = "t-2"
    api.sms.list_devices_sms_messages(ACCOUNT)
    api._session.invalidate("sess-2-tok")
    api.sms.list_devices_sms_messages(ACCOUNT)
    sent = [r for r, _ in fake.log if r.path_url.endswith("/history")]
    assert ["X-Trace" in r.headers for r in sent] == [False, True, True]
    assert [r.headers["VZ-M2M-Token"] for r in sent] == ["sess-2-tok", "sess-2-tok", "sess-3-tok"]
    assert all(r.headers["Authorization"] == "Bearer bearer-1-tok" for r in sent)
    assert sent[0].headers is not sent[1].headers  # each request gets its own copy
    fake.login.append(reply(200, {"sessionToken": "bad\ntoken"}))
    api._session.invalidate("sess-3-tok")
    for _ in range(2):
        with pytest.raises(errors.ApiPermanentError, match="InvalidHeader"):
            api.sms.list_devices_sms_messages(ACCOUNT)
    assert len([r for r, _ in fake.log if r.path_url.endswith("/history")]) == 3


def test_a_session_header_requests_refuses_is_a_permanent_error(fake: FakeApi, make: Any) -> None:
    """A caller's session header of a type requests refuses fails the call as before, never a TypeError."""
    session = requests.Session()
    session.mount("https://", fake)
    session.headers["X-Bad"] = ["a", "list"]  # type: ignore[assignment]
    with pytest.raises(errors.ApiPermanentError, match="InvalidHeader"):
        make(session=session).sms.list_devices_sms_messages(ACCOUNT)
    assert fake.log == []
