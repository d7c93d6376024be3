"""ThingSpaceClient's error mapping against the in-memory API: vendor errors, cursors, unreadable
answers retried then kept as malformed blocks."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from sync_worker import errors
from tests.unit import client_fake

# The shared fixtures (tests/unit/client_fake.py), registered for this module.
clock = client_fake.clock
fake = client_fake.fake
make = client_fake.make


def test_m2m_4xx_is_permanent_with_code(fake: client_fake.FakeApi, make: Any) -> None:
    """An M2M 400 raises ApiPermanentError with the prefix-less code and the message."""
    fake.api.append(
        client_fake.reply(
            400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.AccountNotFound", "errorMessage": "nf"}
        )
    )
    with pytest.raises(errors.ApiPermanentError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert type(info.value) is errors.ApiPermanentError
    assert (info.value.status, info.value.error_code, info.value.error_message) == (
        400,
        "REQUEST_FAILED.AccountNotFound",
        "nf",
    )


def test_rejected_next_token_is_invalid_cursor(fake: client_fake.FakeApi, make: Any) -> None:
    """A 4xx on a history GET that sent next raises InvalidCursorError."""
    fake.api.append(
        client_fake.reply(400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.InvalidNextToken"})
    )
    with pytest.raises(errors.InvalidCursorError):
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "abc123")


def test_429_on_cursor_is_rate_limit_not_invalid_cursor(fake: client_fake.FakeApi, make: Any) -> None:
    """A 429 with next is rate limiting (retried), never InvalidCursorError."""
    fake.api.extend(
        [client_fake.reply(429, "<html>busy</html>"), client_fake.reply(200, client_fake.history())]
    )
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "abc123")
    assert page.request_next == "abc123"
    assert len(fake.paths("/history")) == 2


@pytest.mark.parametrize("body", ["not json", "[1,2]", '{"messages": 5}'])
def test_malformed_2xx_is_retried_then_a_format_error(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock, body: str
) -> None:
    """A 200 whose body stays unreadable is re-sent up to max_attempts, then raises ResponseFormatError."""
    fake.api.extend([client_fake.reply(200, body, Content_Type="application/json")] * client_fake.ATTEMPTS)
    with pytest.raises(errors.ResponseFormatError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert info.value.status == 200
    assert len(fake.paths("/history")) == client_fake.ATTEMPTS
    assert clock.sleeps == [2.0**n for n in range(client_fake.ATTEMPTS - 1)]


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
    fake: client_fake.FakeApi, make: Any, case: str
) -> None:
    """A 202 whose bad body (safe Location) survives every attempt: MalformedBlockError, both tokens."""
    body = _BAD_BODIES[case]
    fake.api.extend(
        [client_fake.reply(202, body, Location=f"/sms/{client_fake.ACCOUNT}/history?next=Tok2")]
        * client_fake.ATTEMPTS
    )
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "Tok1")
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
    assert (
        fake.paths("/history")
        == [f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=Tok1"] * client_fake.ATTEMPTS
    )


@pytest.mark.parametrize("case", list(_BAD_BODIES))
@pytest.mark.parametrize("status", [200, 202])
def test_one_unreadable_answer_is_retried_with_the_same_token(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock, case: str, status: int
) -> None:
    """An unreadable answer once is a transient fault: the same request again, its Location never used."""
    fake.api.extend(
        [
            client_fake.reply(
                status, _BAD_BODIES[case], Location=f"/sms/{client_fake.ACCOUNT}/history?next=Bad9"
            ),
            client_fake.reply(
                202, client_fake.history(1, True), Location=f"/sms/{client_fake.ACCOUNT}/history?next=Good2"
            ),
        ]
    )
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "Tok1")
    assert (page.status, page.next, page.request_next) == (202, "Good2", "Tok1")
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=Tok1"] * 2
    assert clock.sleeps == [1.0]


def test_202_without_body_or_location_is_retried(fake: client_fake.FakeApi, make: Any) -> None:
    """A bare 202 (no body, no Location) is unreadable, so it is retried rather than refused outright."""
    fake.api.extend([client_fake.reply(202, b""), client_fake.reply(200, client_fake.history())])
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert page.is_final and len(fake.paths("/history")) == 2


def test_unreadable_answer_cut_short_by_the_deadline_stays_transient(
    fake: client_fake.FakeApi, make: Any, clock: client_fake.Clock
) -> None:
    """When the run budget ends the attempts early, the error is transient and nothing is quarantinable."""
    fake.api.extend(
        [client_fake.reply(202, b"not json", Location=f"/sms/{client_fake.ACCOUNT}/history?next=Tok2")]
        * client_fake.ATTEMPTS
    )
    with pytest.raises(errors.UnreadableAnswerError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "Tok1", deadline=clock.now + 1.5)
    assert isinstance(info.value, errors.TransientError)
    assert not isinstance(info.value, errors.MalformedBlockError)
    assert info.value.attempts == 2 and len(fake.paths("/history")) == 2


def test_unreadable_final_200_is_a_malformed_block_without_next(fake: client_fake.FakeApi, make: Any) -> None:
    """A 200 whose bad body survives every attempt raises MalformedBlockError with next_token None."""
    fake.api.extend([client_fake.reply(200, b"null")] * client_fake.ATTEMPTS)
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert (info.value.status, info.value.next_token, info.value.request_next) == (200, None, None)
    assert info.value.body == b"null"


def test_unreadable_body_with_bad_location_stays_unsafe_location(
    fake: client_fake.FakeApi, make: Any
) -> None:
    """A bad body under a foreign Location ends, after the attempts, as UnsafeLocationError."""
    fake.api.extend(
        [client_fake.reply(202, b"not json", Location="https://evil.example/api/x?next=Tok2")]
        * client_fake.ATTEMPTS
    )
    with pytest.raises(errors.UnsafeLocationError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert not isinstance(info.value, errors.MalformedBlockError)
    assert len(fake.paths("/history")) == client_fake.ATTEMPTS


def test_malformed_block_keeps_at_most_the_cap() -> None:
    """A body over MAX_KEPT_BODY keeps its first bytes, its full size and the digest of the whole body."""
    body = b"x" * (errors.MalformedBlockError.MAX_KEPT_BODY + 10)
    exc = errors.MalformedBlockError("m", body=body, problem="p", next_token=None, request_next=None)
    assert len(exc.body) == errors.MalformedBlockError.MAX_KEPT_BODY
    assert exc.body_size == len(body) and exc.body_truncated
    assert exc.body_sha256 == hashlib.sha256(body).hexdigest()


def test_redirect_is_not_followed(fake: client_fake.FakeApi, make: Any) -> None:
    """A 302 is not followed (it would carry both tokens): it is a format error."""
    fake.api.append(client_fake.reply(302, "", Location="https://evil.example/steal"))
    with pytest.raises(errors.ResponseFormatError):
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert all("evil" not in (r.url or "") for r, _ in fake.log)
