"""ThingSpaceClient's validation and configuration: send requests, base URLs, secrets kept out of
reprs and errors, proxies, session headers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests
import requests.adapters

from sync_worker import client, errors, models, secret
from tests.unit import client_fake

# The shared fixtures (tests/unit/client_fake.py), registered for this module.
clock = client_fake.clock
fake = client_fake.fake
make = client_fake.make


def test_invalid_send_request_sends_nothing(fake: client_fake.FakeApi, make: Any) -> None:
    """An SMS over the 7-bit limit raises ValidationError before any HTTP request."""
    req = models.SMSSendRequest(client_fake.ACCOUNT, "x" * 161, (models.DeviceId("123", "imei"),))
    with pytest.raises(errors.ValidationError):
        make().sms.send_sms_to_device(req)
    assert fake.log == []


@pytest.mark.parametrize(
    "account", ["", "ab", "../../admin", "acct?next=x", "a" * 33, "acct%00", "0252012345-00001\n"]
)
def test_invalid_account_name_sends_nothing(fake: client_fake.FakeApi, make: Any, account: str) -> None:
    """A malformed account name raises ValidationError before any HTTP request."""
    with pytest.raises(errors.ValidationError):
        make().sms.list_devices_sms_messages(account)
    assert fake.log == []


def test_send_posts_the_wire_body(fake: client_fake.FakeApi, make: Any) -> None:
    """send_sms_to_device POSTs the camelCase body and returns the requestId."""
    fake.api.append(client_fake.reply(200, {"requestId": "r-1"}))
    req = models.SMSSendRequest(client_fake.ACCOUNT, "hi", (models.DeviceId("00123", "imei"),))
    assert make().sms.send_sms_to_device(req).request_id == "r-1"
    sent = fake.log[-1][0]
    assert sent.method == "POST" and sent.path_url == "/api/m2m/v1/sms"
    assert json.loads(sent.body or b"") == req.to_wire()


def _cfg(base_url: str, insecure: bool = False) -> client.ClientConfig:
    return client.ClientConfig(
        base_url=base_url,
        client_id="cid",
        client_secret=secret.Secret(client_fake.CLIENT_SECRET),
        username="user",
        password=secret.Secret(client_fake.PASSWORD),
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
        assert client_fake.CLIENT_SECRET not in text and client_fake.PASSWORD not in text
    c.close()


def test_errors_never_contain_tokens_or_passwords(fake: client_fake.FakeApi, make: Any) -> None:
    """Error text from every failure path holds no password, client secret or issued token."""
    fake.api.extend(
        [
            client_fake.reply(401, {"fault": {"code": 900901}}),
            client_fake.reply(401, {"fault": {"code": 900901}}),
        ]
    )
    c = make()
    texts: list[str] = []
    with pytest.raises(errors.AuthError) as info:
        c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    texts.append(str(info.value))
    texts.append(repr(info.value))
    fake.login.append(client_fake.reply(400, {"errorCode": "A.REQUEST_FAILED.InvalidCredentials"}))
    c2 = make()
    with pytest.raises(errors.LoginFailedError) as info2:
        c2.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    texts += [str(info2.value), repr(info2.value), repr(c2), repr(c2._session), repr(c2._bearer)]
    for text in texts:
        for value in (
            client_fake.PASSWORD,
            client_fake.CLIENT_SECRET,
            "bearer-1-tok",
            "sess-2-tok",
            "bearer-3-tok",
        ):
            assert value not in text
    assert "bearer-1-tok" in secret.known_values()


def test_environment_proxies_and_ca_bundle_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy and CA-bundle variables still apply (read at start, not per request); ~/.netrc never does."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "other.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/private-ca.pem")
    cfg = client.ClientConfig(
        base_url=client_fake.BASE,
        client_id="cid",
        client_secret=secret.Secret(client_fake.CLIENT_SECRET),
        username="user",
        password=secret.Secret(client_fake.PASSWORD),
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
    fake: client_fake.FakeApi, make: Any
) -> None:
    """Checked headers are reused, yet a changed session header or token is sent; a bad one always fails."""
    session = requests.Session()
    session.mount("https://", fake)
    api = make(session=session)
    api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    session.headers["X-Trace"] = "t-2"
    api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    api._session.invalidate("sess-2-tok")
    api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    sent = [r for r, _ in fake.log if r.path_url.endswith("/history")]
    assert ["X-Trace" in r.headers for r in sent] == [False, True, True]
    assert [r.headers["VZ-M2M-Token"] for r in sent] == ["sess-2-tok", "sess-2-tok", "sess-3-tok"]
    assert all(r.headers["Authorization"] == "Bearer bearer-1-tok" for r in sent)
    assert sent[0].headers is not sent[1].headers  # each request gets its own copy
    fake.login.append(client_fake.reply(200, {"sessionToken": "bad\ntoken"}))
    api._session.invalidate("sess-3-tok")
    for _ in range(2):
        with pytest.raises(errors.ApiPermanentError, match="InvalidHeader"):
            api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len([r for r, _ in fake.log if r.path_url.endswith("/history")]) == 3


def test_a_session_header_requests_refuses_is_a_permanent_error(fake: client_fake.FakeApi, make: Any) -> None:
    """A caller's session header of a type requests refuses fails the call as before, never a TypeError."""
    session = requests.Session()
    session.mount("https://", fake)
    session.headers["X-Bad"] = ["a", "list"]  # type: ignore[assignment]
    with pytest.raises(errors.ApiPermanentError, match="InvalidHeader"):
        make(session=session).sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert fake.log == []
