"""A network failure names the host and the cause (DNS, refused, TLS), over real sockets on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from sync_worker import client, errors, models, retry, secret, transport

ACCOUNT = "0252012345-00001"


def _client(base_url: str) -> client.ThingSpaceClient:
    return client.ThingSpaceClient(
        client.ClientConfig(
            base_url=base_url,
            client_id="id",
            client_secret=secret.Secret("client-secret-value"),
            username="user",
            password=secret.Secret("password-value"),
            timeout=(2.0, 2.0),
            retry=retry.RetryPolicy(max_attempts=1, sleep=lambda _: None),
            allow_insecure_loopback=base_url.startswith("http://"),
        )
    )


def _failure(base_url: str) -> str:
    with _client(base_url) as api, pytest.raises(errors.ApiTransientError) as caught:
        api.sms.list_devices_sms_messages(ACCOUNT)
    text = str(caught.value)
    assert "client-secret-value" not in text and "password-value" not in text
    return text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A TCP listener that answers every connection with plain HTTP (no TLS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = int(server.getsockname()[1])
    yield port
    stop.set()
    # accept() does not return when the socket is closed under it: one last connection wakes it.
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    thread.join(timeout=5)
    server.close()
    assert not thread.is_alive()


def test_dns_failure_names_the_host_and_says_dns() -> None:
    """A name that does not resolve (.invalid is reserved) gives 'DNS lookup failed' and host:port."""
    text = _failure("https://thingspace.nosuch.invalid/api")
    assert "thingspace.nosuch.invalid:443" in text
    assert "DNS lookup failed" in text


def test_connection_refused_names_the_host_and_port() -> None:
    """Nothing listening: 'connection refused' with 127.0.0.1:PORT."""
    port = _closed_port()
    text = _failure(f"http://127.0.0.1:{port}/api")
    assert f"127.0.0.1:{port}" in text
    assert "connection refused" in text


def test_tls_failure_names_the_host_and_says_tls(plain_http_port: int) -> None:
    """https:// to a server that speaks plain HTTP: 'TLS handshake failed' with host:port."""
    text = _failure(f"https://127.0.0.1:{plain_http_port}/api")
    assert f"127.0.0.1:{plain_http_port}" in text
    assert "TLS handshake failed" in text


def test_send_failure_names_the_cause_too() -> None:
    """The send path (never retried) reports the same host and cause."""
    port = _closed_port()
    request = models.SMSSendRequest(ACCOUNT, "hi", (models.DeviceId("0123456789", "imei"),))
    with _client(f"http://127.0.0.1:{port}/api") as api, pytest.raises(errors.ApiTransientError) as caught:
        api.sms.send_sms_to_device(request)
    assert f"127.0.0.1:{port}" in str(caught.value) and "connection refused" in str(caught.value)


def test_network_cause_walks_wrapped_exceptions() -> None:
    """The cause is found however deep the library wrapped it (urllib3 reason, __cause__)."""
    inner = socket.gaierror(-2, "Name or service not known")
    outer = RuntimeError("wrapper")
    outer.__cause__ = inner
    assert transport.network_cause(outer) == "DNS lookup failed (Name or service not known)"
    assert transport.network_cause(RuntimeError("x")) == "RuntimeError"
