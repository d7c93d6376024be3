"""The receiver's HTTP server and bounded database use: stalled clients hold no worker thread, a held
lock gets 503 with Retry-After and never more connections than the pool."""

from __future__ import annotations

import contextlib
import socket

import psycopg
import pytest

from sync_worker import db
from tests.integration import push

# The shared fixtures (tests/integration/push.py), registered for this module.
log_buffer = push.log_buffer


def test_stalled_half_sent_requests_hold_no_worker_thread_and_callbacks_still_pass(db_url: str) -> None:
    """200 clients that send half a request and stall: no thread each (the server reads a body before a
    worker sees it), and a real callback beside them is stored at once."""
    import threading  # noqa: PLC0415  # only this test counts threads

    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url), threads=4) as r, contextlib.ExitStack() as stack:
        before = threading.active_count()
        for _ in range(200):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", r.port), timeout=10))
            head = f"POST /callbacks/{push.ACCOUNT} HTTP/1.1\r\nContent-Type: application/json\r\n"
            sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:20])
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
        # No thread per stalled client: at most a helper or two started since (old server: 200 more).
        assert threading.active_count() <= before + 2
    assert len(push.history(db_url)) == 1


def sessions(db_url: str, application_name: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("table", ["sms_callback", "sms_message"])
def test_a_held_lock_gets_503_with_retry_after_never_more_connections_than_the_pool_then_recovers(
    db_url: str, table: str
) -> None:
    """With a lock held on the history or the callback table, 24 concurrent callbacks each get 503 and
    Retry-After within the timeouts, the receiver never holds more than its 3 connections; after
    the lock is gone the same 24 callbacks are all stored."""
    import concurrent.futures  # noqa: PLC0415  # only this test runs callbacks concurrently
    import threading  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    name = f"receiver-{uuid.uuid4().hex[:12]}"
    bodies = [push.envelope(m, requestId=f"r-{i}") for i, m in enumerate(push.messages(24))]
    with (
        # No commit wait bound: the lock is to be the only cause of the 503s. On a loaded machine a
        # batch (a new connection after each failed one, then the 1.5 s lock wait) could outlast the
        # default 3.5 s, and a callback was counted commit_timeout instead of busy (a flake).
        push.running_receiver(
            db.connector(db_url, application_name=name), pool_size=3, commit_timeout=60.0
        ) as r,
        psycopg.connect(db_url) as holder,
        concurrent.futures.ThreadPoolExecutor(24) as callers,
    ):
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # fixed names
        most = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, sessions(db_url, name))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            answers = list(callers.map(lambda b: push.post_full(r.port, b), bodies))
        finally:
            done.set()
            watcher.join()
        holder.rollback()
        assert [(a[0], a[1], a[2]) for a in answers] == [(503, {"status": "unavailable"}, "2")] * 24
        assert 1 <= most <= 3
        assert push.sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="busy") == 24
        assert push.count(db_url, "sms_history") == 0
        again = list(callers.map(lambda b: push.post_full(r.port, b)[0], bodies))
        assert again == [200] * 24
        assert sessions(db_url, name) <= 3
    assert len(push.history(db_url)) == 24
