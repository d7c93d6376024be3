"""The receiver's HTTP server (granian, embedded) over real sockets: the bounds a client cannot get
around (a body or a head that never completes, a chunked body over the limit), the headers of a
503, and a stop that does not wait for stalled clients."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from sync_worker import db, errors
from tests.integration import push


def head(length: int) -> bytes:
    return (
        f"POST /callbacks/{push.ACCOUNT} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.timing
def test_a_body_that_stops_coming_is_answered_408_and_its_connection_closed(db_url: str) -> None:
    """Half a body, then nothing: after read_timeout the answer is 408 refused (body_timeout) and the
    server closes the connection; nothing is stored."""
    body = push.envelope(push.messages(1)[0])
    with (
        push.running_receiver(db.connector(db_url), read_timeout=1.0) as r,
        socket.create_connection(("127.0.0.1", r.port), timeout=30) as sock,
    ):
        sent = time.monotonic()
        sock.sendall(head(len(body)) + body[:20])
        reply = answer(sock)
        assert time.monotonic() - sent >= 0.9
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == {"status": "refused"}
        reason = "body_timeout"
        assert push.sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason=reason) == 1
    assert push.count(db_url, "sms_callback") == 0


def test_a_connection_that_sends_no_complete_head_is_closed_after_read_timeout(db_url: str) -> None:
    """A client that connects and sends nothing, or half a request line, is disconnected by the server
    after read_timeout (it holds a connection slot no longer)."""
    with push.running_receiver(db.connector(db_url), read_timeout=1.0) as r, contextlib.ExitStack() as stack:
        silent = stack.enter_context(socket.create_connection(("127.0.0.1", r.port), timeout=30))
        partial = stack.enter_context(socket.create_connection(("127.0.0.1", r.port), timeout=30))
        partial.sendall(b"POST /callbacks/")
        assert b" 200 " not in answer(silent)
        assert b" 200 " not in answer(partial)


def test_a_chunked_body_over_the_limit_is_refused_413(db_url: str) -> None:
    """No Content-Length, a chunked body: counted as it comes, refused 413 past max_body_bytes; one
    within the limit is stored."""
    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url), max_body_bytes=len(body)) as r:
        for payload, status in ((body + b" " * 10, 413), (body, 200)):
            with socket.create_connection(("127.0.0.1", r.port), timeout=30) as sock:
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (payload[:100], payload[100:]))
                sock.sendall(
                    f"POST /callbacks/{push.ACCOUNT} HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\n"
                    "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                    + chunks
                    + b"0\r\n\r\n"
                )
                assert answer(sock).startswith(f"HTTP/1.1 {status} ".encode())
    assert len(push.history(db_url)) == 1


@pytest.mark.timing
def test_stop_answers_the_clients_still_sending_a_body_and_does_not_wait_for_them(db_url: str) -> None:
    """50 clients stalled mid-body when the receiver stops: each gets 503 with Retry-After and its
    connection closed, and stop returns well before their read_timeout."""
    body = push.envelope(push.messages(1)[0])
    with contextlib.ExitStack() as stack:
        r = stack.enter_context(push.running_receiver(db.connector(db_url), read_timeout=60.0))
        stalled = []
        for _ in range(50):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", r.port), timeout=30))
            sock.sendall(head(len(body)) + body[:20])
            stalled.append(sock)
        assert push.post(r.port, body)[0] == 200
        began = time.monotonic()
        r.stop()
        assert time.monotonic() - began < 10
        for sock in stalled:
            reply = answer(sock)
            assert reply.startswith(b"HTTP/1.1 503 ")
            assert b"\r\nretry-after: 2\r\n" in reply.lower()


def test_a_body_under_the_limit_larger_than_the_head_buffer_is_read_whole_and_stored(db_url: str) -> None:
    """A 60 KiB callback (the head buffer is 16 KiB; the limit 64 KiB) arrives whole and is stored."""
    message = {**push.messages(1)[0], "message": "x" * 60_000}
    body = push.envelope(message)
    assert 60_000 < len(body) <= 65536
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    assert len(push.history(db_url)) == 1


def test_a_second_receiver_on_a_port_in_use_fails_to_start_naming_the_variable(db_url: str) -> None:
    """The port is bound without SO_REUSEPORT: a second receiver on it fails (ConfigError naming
    SYNC_CALLBACK_PORT) instead of sharing it, and the first one still answers."""
    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url)) as first:
        second = push.running_receiver(db.connector(db_url), port=first.port)
        with pytest.raises(errors.ConfigError, match="SYNC_CALLBACK_PORT"), second:
            pass
        assert push.post(first.port, body)[0] == 200
