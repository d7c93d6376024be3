"""ThingSpaceClient against the simulator over real HTTP sockets on 127.0.0.1."""

from __future__ import annotations

import http.server
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sync_worker import client, errors, models, retry, secret, transport
from sync_worker import simulator as sim_mod
from tests.fakes import FakeTime

ACCOUNT = "0252012345-00001"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make_client(
    sim: sim_mod.Simulator, fake_time: FakeTime, *, password: str | None = None, **kw: Any
) -> client.ThingSpaceClient:
    args: dict[str, Any] = {
        "base_url": sim.base_url,
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "username": sim.config.username,
        "password": secret.Secret(password) if password is not None else sim.config.password,
        "timeout": (2.0, 5.0),
        "retry": retry.RetryPolicy(sleep=fake_time.sleep, clock=fake_time.clock, random=lambda: 0.0),
        "allow_insecure_loopback": True,
    }
    args.update(kw)
    return client.ThingSpaceClient(client.ClientConfig(**args))


@pytest.fixture
def api(simulator: sim_mod.Simulator, fake_time: FakeTime) -> Iterator[client.ThingSpaceClient]:
    with make_client(simulator, fake_time) as c:
        yield c


def message_texts(pages: list[models.HistoryPage]) -> list[Any]:
    return [m.raw for page in pages for m in page.messages]


def read_through(blocks: Iterator[models.HistoryPage]) -> list[models.HistoryPage]:
    """Every block, each let past the acknowledgement gate unstored (these tests keep nothing)."""
    pages = []
    for page in blocks:
        assert page.ticket is not None
        page.ticket.acknowledge_unstored()
        pages.append(page)
    return pages


def test_pages_1000_messages_acknowledging_every_token_once(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient
) -> None:
    """1,000 queued messages arrive in 10 blocks of 100; each of the 9 tokens acknowledges exactly once."""
    seeded = simulator.seed(ACCOUNT, 1000)
    pages = read_through(api.sms.iter_history_blocks(ACCOUNT))
    assert [len(p.messages) for p in pages] == [100] * 10
    assert [p.status for p in pages] == [202] * 9 + [200]
    assert pages[-1].is_final
    assert message_texts(pages) == seeded
    assert all(not m.problems for p in pages for m in p.messages)
    acks = simulator.token_acks(ACCOUNT)
    assert len(acks) == 9
    assert set(acks.values()) == {1}
    assert [p.next for p in pages[:-1]] == simulator.issued_tokens(ACCOUNT)
    assert simulator.stats.history_requests == 10
    # The final block is dequeued by the server after it wrote the response, which can
    # race this check; the 900 acknowledged by tokens are settled before the last reply.
    assert simulator.acknowledged(ACCOUNT)[:900] == seeded[:900]


def test_session_expiry_mid_paging_needs_exactly_one_relogin(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient
) -> None:
    """The session expiring between blocks costs one re-login; paging continues and loses nothing."""
    seeded = simulator.seed(ACCOUNT, 350)
    blocks = api.sms.iter_history_blocks(ACCOUNT)
    pages = read_through(itertools.islice(blocks, 1))
    simulator.expire_session()
    pages += read_through(blocks)
    assert message_texts(pages) == seeded
    assert simulator.stats.logins == 2
    assert simulator.stats.login_attempts == 2
    assert set(simulator.token_acks(ACCOUNT).values()) == {1}


def test_bad_password_causes_exactly_one_login_attempt(
    simulator: sim_mod.Simulator, fake_time: FakeTime
) -> None:
    """A wrong password is tried once, raises LoginFailedError, and the client's default guard refuses
    to try it again on later calls."""
    with make_client(simulator, fake_time, password="wrong-password-123") as c:
        with pytest.raises(errors.LoginFailedError) as info:
            c.sms.list_devices_sms_messages(ACCOUNT)
        with pytest.raises(errors.LoginGuardTrippedError):
            c.sms.start_queued_sms_delivery(ACCOUNT)
    assert "five failed logins" in str(info.value)
    assert "wrong-password-123" not in str(info.value)
    assert simulator.stats.login_attempts == 1
    assert simulator.stats.failed_logins == 1
    assert simulator.stats.history_requests == 0
    assert fake_time.sleeps == []


def test_send_is_not_retried_on_503(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, fake_time: FakeTime
) -> None:
    """A 503 on POST /sms raises at once: one send request, nothing recorded, no wait."""
    simulator.faults.script("send", [503])
    request = models.SMSSendRequest(ACCOUNT, "hello", (models.DeviceId("0123456789", "imei"),))
    with pytest.raises(errors.ApiTransientError) as info:
        api.sms.send_sms_to_device(request)
    assert info.value.status == 503
    assert simulator.stats.sends == 1
    assert simulator.sent == []
    assert fake_time.sleeps == []
    assert api.sms.send_sms_to_device(request).request_id
    assert simulator.sent == [request.to_wire()]


def test_retry_after_2_is_waited_through_the_injected_sleep(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, fake_time: FakeTime
) -> None:
    """A 429 with Retry-After: 2 sleeps exactly 2 seconds (injected), then the GET succeeds."""
    simulator.seed(ACCOUNT, 5)
    simulator.faults.retry_after = "2"
    simulator.faults.script("history", [429])
    page = api.sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 5
    assert fake_time.sleeps == [2.0]
    assert simulator.stats.history_requests == 2
    assert simulator.stats.faults["429"] == 1


def test_retry_after_http_date_is_honoured(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, fake_time: FakeTime
) -> None:
    """A Retry-After HTTP-date about 30 s ahead becomes a wait of about 30 s."""
    simulator.faults.retry_after = sim_mod.http_date(30)
    simulator.faults.script("history", [429])
    api.sms.list_devices_sms_messages(ACCOUNT)
    assert len(fake_time.sleeps) == 1
    assert 27.0 <= fake_time.sleeps[0] <= 31.0


class CountingListener:
    """A second HTTP server on loopback that only counts what reaches it."""

    def __init__(self) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.end_headers()

            do_POST = do_PUT = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    lst = CountingListener()
    try:
        yield lst
    finally:
        lst.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "evil.example"])
def test_foreign_location_is_rejected_and_never_contacted(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, listener: CountingListener, host: str
) -> None:
    """A 202 whose Location names another host/port raises UnsafeLocationError; that host gets nothing."""
    foreign = f"http://{host}:{listener.port}/api/m2m/v1/sms/{ACCOUNT}/history?next=abc123"
    simulator.faults.next_history_raw(
        b'{"hasMoreData":true,"messages":[]}',
        status=202,
        headers=[("Content-Type", "application/json"), ("Location", foreign)],
    )
    blocks = api.sms.iter_history_blocks(ACCOUNT)
    with pytest.raises(errors.UnsafeLocationError):
        next(blocks)
    assert listener.hits == 0
    assert simulator.stats.history_requests == 1


def test_redirect_is_not_followed(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, listener: CountingListener
) -> None:
    """A 302 toward another listener is refused; the tokens never reach it."""
    target = f"http://127.0.0.1:{listener.port}/steal"
    simulator.faults.next_history_raw(b"", status=302, headers=[("Location", target)])
    with pytest.raises(errors.ResponseFormatError):
        api.sms.list_devices_sms_messages(ACCOUNT)
    assert listener.hits == 0


def test_bearer_401_is_refreshed_once(simulator: sim_mod.Simulator, api: client.ThingSpaceClient) -> None:
    """An expired bearer (gateway 401) is replaced once and the call replayed; the session survives."""
    simulator.seed(ACCOUNT, 3)
    api.sms.start_queued_sms_delivery(ACCOUNT)
    simulator.expire_bearer()
    page = api.sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 3
    assert simulator.stats.token_requests == 2
    assert simulator.stats.logins == 1
    assert simulator.stats.history_requests == 2


def test_lost_response_on_next_is_retried_without_double_ack(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient, fake_time: FakeTime
) -> None:
    """A dropped response to GET ?next is retried; with reusable tokens the block is acked once, none lost."""
    seeded = simulator.seed(ACCOUNT, 250)
    blocks = api.sms.iter_history_blocks(ACCOUNT)
    pages = read_through(itertools.islice(blocks, 1))
    simulator.faults.script("history", ["lost_response"])
    pages += read_through(blocks)
    assert message_texts(pages) == seeded
    assert set(simulator.token_acks(ACCOUNT).values()) == {1}
    assert len(fake_time.sleeps) == 1


def test_single_use_token_replay_is_invalid_cursor(
    simulator: sim_mod.Simulator, api: client.ThingSpaceClient
) -> None:
    """With single-use tokens, sending a used token again raises InvalidCursorError."""
    simulator.config.token_mode = "single_use"
    simulator.seed(ACCOUNT, 150)
    first = api.sms.list_devices_sms_messages(ACCOUNT)
    assert first.next is not None
    api.sms.list_devices_sms_messages(ACCOUNT, first.next)
    with pytest.raises(errors.InvalidCursorError) as info:
        api.sms.list_devices_sms_messages(ACCOUNT, first.next)
    assert info.value.error_code == "REQUEST_FAILED.InvalidNextToken"


def test_read_timeout_on_get_is_retried(simulator: sim_mod.Simulator, fake_time: FakeTime) -> None:
    """A history GET that gets no answer within the read timeout is retried and then succeeds."""
    simulator.seed(ACCOUNT, 2)
    simulator.faults.timeout_seconds = 10.0
    simulator.faults.script("history", ["timeout"])
    with make_client(simulator, fake_time, timeout=(2.0, 0.3)) as c:
        page = c.sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 2
    assert simulator.stats.history_requests == 2
    assert len(fake_time.sleeps) == 1


def test_unknown_account_is_permanent(simulator: sim_mod.Simulator, api: client.ThingSpaceClient) -> None:
    """An account the platform does not know is a permanent error with its code, not retried."""
    with pytest.raises(errors.ApiPermanentError) as info:
        api.sms.list_devices_sms_messages("0999999999-00001")
    assert info.value.error_code == "REQUEST_FAILED.AccountNotFound"
    assert simulator.stats.history_requests == 1


def test_session_cookies_headers_and_hooks_still_apply(
    simulator: sim_mod.Simulator, fake_time: FakeTime
) -> None:
    """Sent through the mounted adapter, a request still carries what Session.request added.

    A caller's session keeps its headers (the client's own win), a cookie the server set is
    stored and sent back on later requests, and the session's response hooks still run.
    """

    def set_cookie(request: sim_mod.Request, answer: sim_mod.Answer) -> sim_mod.Answer | None:
        return answer.with_header("Set-Cookie", "lb=node-7; Path=/") if request.kind == "token" else None

    simulator.hooks.rewrite = set_cookie
    simulator.seed(ACCOUNT, 3)
    seen: list[requests.PreparedRequest] = []
    session = requests.Session()
    session.headers["X-Trace"] = "trace-1"
    session.headers["User-Agent"] = "not-ours"
    session.hooks["response"].append(lambda r, **_: seen.append(r.request))
    with make_client(simulator, fake_time, session=session) as api:
        page = api.sms.list_devices_sms_messages(ACCOUNT)
    assert len(page.messages) == 3
    assert session.cookies.get("lb") == "node-7"
    assert [r.path_url.rsplit("/", 1)[-1] for r in seen] == ["token", "login", "history"]
    token, login, history = seen
    assert "Cookie" not in token.headers
    assert login.headers["Cookie"] == history.headers["Cookie"] == "lb=node-7"
    for sent in seen:
        assert sent.headers["X-Trace"] == "trace-1"
        assert sent.headers["User-Agent"] == transport.USER_AGENT
