"""Pure helpers of paging and answers: Location parsing, Retry-After parsing, error codes."""

from __future__ import annotations

import datetime
import email.utils

import hypothesis
import pytest
from hypothesis import strategies as st

from sync_worker import answers, errors, paging

BASE = "https://thingspace.verizon.com/api"


def test_relative_location_gives_the_token() -> None:
    """The documented relative Location yields exactly its next value."""
    assert (
        paging.next_token_from_location("/sms/0252012345-00001/history?next=abc123XYZ", BASE) == "abc123XYZ"
    )


def test_absolute_location_on_the_same_origin_is_accepted() -> None:
    """An absolute Location on the base URL's scheme, host and (default) port is fine."""
    location = "https://thingspace.verizon.com:443/api/m2m/v1/sms/acct/history?next=T0k3n"
    assert paging.next_token_from_location(location, BASE) == "T0k3n"


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/api/m2m/v1/sms/acct/history?next=abc",
        "http://thingspace.verizon.com/api/m2m/v1/sms/acct/history?next=abc",
        "https://thingspace.verizon.com:8443/api/m2m/v1/sms/acct/history?next=abc",
        "//evil.example/sms/acct/history?next=abc",
        "https://user:pw@thingspace.verizon.com/api/sms/acct/history?next=abc",
        "https://thingspace.verizon.com.evil.example/sms/acct/history?next=abc",
        "ftp://thingspace.verizon.com/sms/acct/history?next=abc",
    ],
)
def test_foreign_origin_is_rejected(location: str) -> None:
    """A Location on another scheme, host, port or with userinfo is refused, never trusted."""
    with pytest.raises(errors.UnsafeLocationError):
        paging.next_token_from_location(location, BASE)


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:8480/api/m2m/v1/sms/acct/history?next=abc",
        "http://127.0.0.2:8480/api/m2m/v1/sms/acct/history?next=abc",
        "http://evil.example:8480/api/m2m/v1/sms/acct/history?next=abc",
        "https://evil.example:443/api/m2m/v1/sms/acct/history?next=abc",
    ],
)
def test_foreign_host_on_the_same_scheme_and_port_is_rejected(location: str) -> None:
    """Only the host differs from the base URL (explicit same port): refused, so the host is compared."""
    base = BASE if location.startswith("https") else "http://127.0.0.1:8480/api"
    with pytest.raises(errors.UnsafeLocationError):
        paging.next_token_from_location(location, base)


@pytest.mark.parametrize(
    "location",
    [
        "/sms/acct/history?next=",
        "/sms/acct/history",
        "/sms/acct/history?next=abc&next=def",
        "/sms/acct/history?next=..%2F..%2Fadmin",
        "/sms/acct/history?next=abc%00def",
        "/sms/acct/history?next=abc%20def",
        "/sms/acct/history?next=abc def",
        "/sms/acct/history?next=abc\r\nX-Evil: 1",
        "/sms/acct/history?next=" + "a" * 10_000,
        "/sms/acct/history?next=" + "a" * 65,
        "/sms/acct/history?next=ab-c",
        "/sms/acct/history?next=%C3%A9t%C3%A9",
        "",
    ],
)
def test_malformed_token_is_rejected(location: str) -> None:
    """Empty, missing, repeated, over-long or non-alphanumeric tokens raise UnsafeLocationError."""
    with pytest.raises(errors.UnsafeLocationError):
        paging.next_token_from_location(location, BASE)


def test_long_token_is_not_echoed_whole_in_the_error() -> None:
    """A 10,000-character token is summarised, not copied, into the error text."""
    with pytest.raises(errors.UnsafeLocationError) as info:
        paging.next_token_from_location("/h?next=" + "a" * 10_000, BASE)
    assert len(str(info.value)) < 300
    assert "10000" in str(info.value)


def test_dot_dot_path_is_ignored_and_only_the_token_taken() -> None:
    """A `../` path does not matter: the path is never used, only the token is."""
    assert paging.next_token_from_location("../../../admin?next=abc", BASE) == "abc"


def test_sixty_four_character_token_is_the_limit() -> None:
    """Exactly 64 letters/digits is accepted (the documented upper bound)."""
    token = "Z9" * 32
    assert paging.next_token_from_location(f"/h?next={token}", BASE) == token


def test_retry_after_seconds() -> None:
    """Retry-After delta-seconds parse as a float; negatives clamp to zero."""
    assert answers.parse_retry_after("2") == 2.0
    assert answers.parse_retry_after(" 1.5 ") == 1.5
    assert answers.parse_retry_after("-3") == 0.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is the distance from now, in seconds."""
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    value = email.utils.format_datetime(now + datetime.timedelta(seconds=30), usegmt=True)
    assert answers.parse_retry_after(value, now=now) == 30.0
    past = email.utils.format_datetime(now - datetime.timedelta(seconds=30), usegmt=True)
    assert answers.parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "Mon, 99 Foo 2026"])
def test_retry_after_unreadable_is_none(value: str | None) -> None:
    """Absent or unreadable Retry-After values are ignored (None), not guessed."""
    assert answers.parse_retry_after(value) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("UnifiedWebService.REQUEST_FAILED.AccountNotFound", "REQUEST_FAILED.AccountNotFound"),
        ("UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "REQUEST_FAILED.SessionToken.Expired"),
        ("REQUEST_FAILED.SessionToken.Expired", "REQUEST_FAILED.SessionToken.Expired"),
        ("SessionToken.Expired", "SessionToken.Expired"),
        ("PLAIN", "PLAIN"),
    ],
)
def test_service_prefix_is_stripped(raw: str, expected: str) -> None:
    """Only a CamelCase service prefix is removed from an M2M errorCode."""
    assert answers.strip_service_prefix(raw) == expected


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(st.text(max_size=200))
def test_any_location_yields_a_safe_token_or_unsafe_location_error(location: str) -> None:
    """Whatever the Location text, the result is a 1-64 alphanumeric token or UnsafeLocationError."""
    try:
        token = paging.next_token_from_location(location, BASE)
    except errors.UnsafeLocationError:
        return
    assert paging.valid_token(token)
    assert token.isascii() and token.isalnum() and len(token) <= 64


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(
    st.from_regex(r"[A-Za-z0-9]{1,64}", fullmatch=True), st.sampled_from(["/sms/a/history", "", "x"])
)
def test_every_valid_token_round_trips(token: str, path: str) -> None:
    """Any 1-64 letters/digits token in a relative Location is returned unchanged."""
    assert paging.next_token_from_location(f"{path}?next={token}", BASE) == token


def test_exactly_whitespace_and_control_characters_make_a_location_unsafe() -> None:
    """The one-regex check refuses every code point str.isspace() or C0/DEL covers, and no other."""
    refused = [c for c in range(0x110000) if paging._UNSAFE_LOCATION_RE.search(chr(c))]
    assert refused == [c for c in range(0x110000) if chr(c).isspace() or c < 0x20 or c == 0x7F]
    for ch in ("\u2028", "\x85", "\x1c", "\x7f", "\u3000"):
        with pytest.raises(errors.UnsafeLocationError, match="whitespace or control"):
            paging.next_token_from_location(f"/api/h?next=ab{ch}", "https://ts.example/api")
