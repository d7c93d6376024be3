"""ThingSpaceClient's retries against the in-memory API: what is retried, Retry-After, the deadline,
the observer's counts."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import requests.adapters

from sync_worker import errors, models, retry
from tests.unit import client_fake

# The shared fixtures (tests/unit/client_fake.py), registered for this module.
clock = client_fake.clock
fake = client_fake.fake
make = client_fake.make


def test_get_retried_on_503_html_page(fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock) -> None:
    """A 503 HTML page on a GET is transient: retried after the backoff, then succeeds."""
    fake.api.extend(
        [
            client_fake.reply(503, "<html>down</html>", Content_Type="text/html"),
            client_fake.reply(200, client_fake.history()),
        ]
    )
    make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(fake.paths("/history")) == 2
    assert clock.sleeps == [1.0]


def test_post_send_not_retried_on_503(fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock) -> None:
    """send_sms_to_device is never retried: one 503 raises ApiTransientError at once."""
    fake.api.append(client_fake.reply(503, "<html>down</html>"))
    req = models.SMSSendRequest(client_fake.ACCOUNT, "hi", (models.DeviceId("123", "imei"),))
    with pytest.raises(errors.ApiTransientError) as info:
        make().sms.send_sms_to_device(req)
    assert info.value.status == 503 and info.value.error_message is None
    assert len(fake.paths("/m2m/v1/sms")) == 1
    assert clock.sleeps == []


def test_put_retried_on_timeout(fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock) -> None:
    """startCallbacks (PUT) is retried after a read timeout."""
    fake.api.extend([requests.ReadTimeout("slow"), client_fake.reply(200, {"success": True})])
    result = make().sms.start_queued_sms_delivery(client_fake.ACCOUNT)
    assert result.success is True
    assert len(fake.paths("/startCallbacks")) == 2


def test_connection_errors_exhaust_attempts(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """Dropped connections are retried max_attempts times, then raised with status None."""
    attempts = retry.DEFAULT_MAX_ATTEMPTS
    fake.api.extend([requests.ConnectionError("refused") for _ in range(attempts)])
    with pytest.raises(errors.ApiTransientError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert info.value.status is None
    assert len(fake.paths("/history")) == attempts
    assert clock.sleeps == [2.0**n for n in range(attempts - 1)]  # 1, 2, 4, 8: doubling from 1 s


def test_429_retry_after_is_waited(fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock) -> None:
    """A 429 with Retry-After: 7 waits exactly 7 seconds through the injected sleep."""
    fake.api.extend(
        [client_fake.reply(429, "slow down", Retry_After="7"), client_fake.reply(200, client_fake.history())]
    )
    make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert clock.sleeps == [7.0]


def test_retry_after_http_date_is_measured_against_the_answers_date(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """A Retry-After HTTP-date waits its distance from the answer's Date header, whatever the local clock."""
    # The server's clock says 2001; ours says today: only the server's Date gives the right 30 s.
    fake.api.extend(
        [
            client_fake.reply(
                429,
                "slow down",
                Retry_After="Mon, 01 Jan 2001 00:00:30 GMT",
                Date="Mon, 01 Jan 2001 00:00:00 GMT",
            ),
            client_fake.reply(200, client_fake.history()),
        ]
    )
    make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert clock.sleeps == [30.0]


def test_retry_after_above_cap_is_raised(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """A Retry-After beyond max_retry_after is not slept through: RateLimitedError is raised."""
    fake.api.append(client_fake.reply(429, "", Retry_After="600"))
    policy = retry.RetryPolicy(sleep=clock.sleep, clock=clock, max_retry_after=60)
    with pytest.raises(errors.RateLimitedError) as info:
        make(retry=policy).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert info.value.retry_after == 600.0
    assert clock.sleeps == []


def test_deadline_stops_retrying(fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock) -> None:
    """With the deadline nearer than the backoff, the 502 is raised without sleeping."""
    fake.api.append(client_fake.reply(502, "bad gateway"))
    with pytest.raises(errors.ApiTransientError):
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, deadline=clock.now + 0.5)
    assert clock.sleeps == []


def test_observer_counts_requests_and_retries(fake: client_fake.FakeApi, make: Any) -> None:
    """The observer sees every HTTP exchange and every retry with its reason and wait."""
    seen: list[tuple[str, Any]] = []

    class Obs:
        def on_request(self, operation: str, status: int | None, seconds: float) -> None:
            seen.append(("request", (operation, status)))

        def on_retry(self, operation: str, reason: str, wait: float) -> None:
            seen.append(("retry", (operation, reason, wait)))

    fake.api.extend(
        [
            client_fake.reply(500, {"errorCode": "X.UNEXPECTED.Y"}),
            client_fake.reply(200, client_fake.history()),
        ]
    )
    make(observer=Obs()).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    op = "list_devices_sms_messages"
    assert seen == [
        ("request", ("oauth_token", 200)),
        ("request", ("session_login", 200)),
        ("request", (op, 500)),
        ("retry", (op, "http_500", 1.0)),
        ("request", (op, 200)),
    ]
