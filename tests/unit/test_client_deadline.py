"""The total deadline of one exchange where the simulator cannot go: a TLS handshake that trickles,
a caller's own requests session, and a body over the cap from an adapter that reads it itself.

The server is a raw TCP socket on loopback; every bound is measured with ``time.monotonic``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sync_worker import client, errors, retry, secret
from tests.unit import client_fake

SLACK = 0.75
pytestmark = pytest.mark.timeout(60)


class TrickleServer:
    """Accepts connections and answers each with ``prefix`` at once, then a space every 0.2 s for ever."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            worker = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.prefix)
                while not self.stop.wait(0.2):
                    conn.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # ends the accept() (close alone does not)
        self.listener.close()
        self.thread.join(5)
        for worker in self.threads:
            worker.join(5)


@pytest.fixture
def tls_trickle() -> Iterator[TrickleServer]:
    # A TLS handshake record header announcing 16 KiB, whose bytes then come one by one.
    server = TrickleServer(b"\x16\x03\x03\x40\x00")
    yield server
    server.close()


def config(base_url: str, **kw: Any) -> client.ClientConfig:
    args: dict[str, Any] = {
        "base_url": base_url,
        "client_id": "cid",
        "client_secret": secret.Secret("deadline-client-secret"),
        "username": "user",
        "password": secret.Secret("deadline-password"),
        "retry": retry.RetryPolicy(max_attempts=1),
        "total_timeout": 1.0,
    }
    args.update(kw)
    return client.ClientConfig(**args)


@pytest.mark.timing
def test_a_trickled_tls_handshake_ends_at_the_total_deadline(tls_trickle: TrickleServer) -> None:
    """A server that sends its TLS handshake a byte at a time (each read well within the connect and
    read timeouts) is cut at the 1 s total deadline: a transient timeout of the token request."""
    started = time.monotonic()
    api = client.ThingSpaceClient(config(f"https://127.0.0.1:{tls_trickle.port}/api"))
    with api, pytest.raises(errors.ApiTransientError) as info:
        api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    elapsed = time.monotonic() - started
    assert info.value.operation == "oauth_token" and "timed out" in str(info.value)
    assert 1.0 <= elapsed <= 1.0 + SLACK
    assert tls_trickle.accepted == 1


@pytest.mark.timing
def test_a_callers_session_is_cut_in_the_body() -> None:
    """With a caller's own requests session (not the client's adapter), a body trickling for ever
    is still cut at the total deadline once its headers are in."""
    body_server = TrickleServer(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999\r\n\r\n{"
    )
    try:
        cfg = config(
            f"http://127.0.0.1:{body_server.port}/api",
            allow_insecure_loopback=True,
            session=requests.Session(),
        )
        started = time.monotonic()
        with client.ThingSpaceClient(cfg) as api, pytest.raises(errors.ApiTransientError) as info:
            api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
        elapsed = time.monotonic() - started
    finally:
        body_server.close()
    assert info.value.operation == "oauth_token" and "timed out" in str(info.value)
    assert 1.0 <= elapsed <= 1.0 + SLACK


def test_a_body_over_the_cap_from_an_adapter_that_read_it_is_unreadable() -> None:
    """An adapter that hands over its body already read (no stream) still gets the cap: the history
    answer is unreadable, retried, then a failure that is never quarantined (only the first bytes
    were kept)."""
    fake = client_fake.FakeApi()
    big = {"messages": [{"message": "x" * 600}], "hasMoreData": False}
    fake.api.extend([client_fake.reply(200, big), client_fake.reply(200, big)])
    session = requests.Session()
    session.mount("https://", fake)
    cfg = config(
        "https://ts.example/api",
        session=session,
        max_body_bytes=500,
        retry=retry.RetryPolicy(max_attempts=2, sleep=lambda _: None),
    )
    with client.ThingSpaceClient(cfg) as api, pytest.raises(errors.ResponseFormatError) as info:
        api.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert not isinstance(info.value, errors.MalformedBlockError)
    unreadable = info.value.__cause__
    assert isinstance(unreadable, errors.UnreadableAnswerError) and unreadable.attempts == 2
    assert unreadable.block.problem == "history body is larger than 500 bytes"
    assert len(unreadable.block.body) == 500 and unreadable.block.next_token is None
