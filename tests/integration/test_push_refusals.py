"""The receiver's refusals, replays and unknown shapes over real HTTP: nothing unauthenticated is
stored or logged, a replay changes nothing, an unknown shape is kept and reported."""

from __future__ import annotations

import http.client
import io
import json
from typing import Any

import psycopg
import pytest

from sync_worker import callbacks, db, simulator
from tests.integration import push

# The shared fixtures (tests/integration/push.py), registered for this module.
log_buffer = push.log_buffer
push_sim = push.push_sim


def test_refusals_store_nothing_and_never_log_the_body_or_password(
    db_url: str, log_buffer: io.StringIO
) -> None:
    """Wrong password, foreign account, account mismatch, oversized, non-JSON, wrong media type,
    no such route: each refused with its status, nothing stored, the sent password in no log."""
    good = push.messages(1)[0]
    wrong = "not-the-password-9876"
    with push.running_receiver(db.connector(db_url)) as r:
        cases = [
            (push.post(r.port, push.envelope(good, password=wrong)), 403),
            (push.post(r.port, push.envelope(good), path=f"/callbacks/{push.OTHER}"), 403),
            (push.post(r.port, push.envelope(good, accountName=push.OTHER)), 403),
            (push.post(r.port, b"{" + b" " * 70_000 + b"}"), 413),
            (push.post(r.port, b"username=a&password=b"), 400),
            (push.post(r.port, push.envelope(good), content_type="text/plain"), 415),
            (push.post(r.port, push.envelope(good), path="/elsewhere"), 404),
        ]
        for (status, body), expected in cases:
            assert (status, body) == (expected, {"status": "refused"})
        refused = {
            reason: push.sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason=reason)
            for reason in (
                "bad_credentials",
                "account_not_served",
                "account_mismatch",
                "body_too_large",
                "not_json",
                "not_json_media_type",
                "no_such_route",
            )
        }
    assert set(refused.values()) == {1.0}
    assert push.count(db_url, "sms_history") == 0
    assert push.count(db_url, "sms_callback") == 0
    logged = log_buffer.getvalue()
    assert logged.count('"callback_refused"') == len(cases)
    assert wrong not in logged
    assert push.PASSWORD not in logged
    assert good["message"] not in logged


def test_source_allowlist_refuses_other_addresses_before_reading(db_url: str) -> None:
    """With only 10.0.0.0/8 allowed, a loopback caller with the right credentials gets 403."""
    with push.running_receiver(db.connector(db_url), allowed=("10.0.0.0/8",)) as r:
        assert push.post(r.port, push.envelope(push.messages(1)[0])) == (403, {"status": "refused"})
        assert (
            push.sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason="source_not_allowed")
            == 1
        )
    assert push.count(db_url, "sms_history") == 0


def post_forwarded(port: int, body: bytes, lines: list[str]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` with one ``X-Forwarded-For`` header line per item of ``lines``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", f"/callbacks/{push.ACCOUNT}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        for line in lines:
            conn.putheader("X-Forwarded-For", line)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_every_forwarded_for_line_is_read_so_an_allowed_first_line_does_not_bypass_the_allowlist(
    db_url: str,
) -> None:
    """Behind a trusted proxy that adds its own X-Forwarded-For line, a caller's forged first line
    naming an allowed address is not believed: the proxy's line names the caller, refused 403."""
    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url), allowed=("10.0.0.0/8",), trusted=("127.0.0.1/32",)) as r:
        assert post_forwarded(r.port, body, ["10.1.2.3", "203.0.113.9"]) == (403, {"status": "refused"})
        assert (
            push.sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason="source_not_allowed")
            == 1
        )
        # The same caller really at an allowed address, through the proxy: accepted.
        assert post_forwarded(r.port, body, ["203.0.113.9", "10.1.2.3"])[0] == 200
    assert len(push.history(db_url)) == 1


@pytest.mark.parametrize(
    "lines",
    [["10.1.2.3, unknown"], ["10.1.2.3", ""], ["10.1.2.3:4711"], ["10.1.2.3,,127.0.0.1"]],
    ids=["word", "empty-line", "port", "empty-hop"],
)
def test_a_forwarded_for_that_cannot_be_read_unambiguously_is_refused(db_url: str, lines: list[str]) -> None:
    """From a trusted proxy, an X-Forwarded-For hop that is not a plain address where the client is
    read: 400 forwarded_for_unreadable, nothing stored, even with no allowlist."""
    with push.running_receiver(db.connector(db_url), trusted=("127.0.0.1/32",)) as r:
        assert post_forwarded(r.port, push.envelope(push.messages(1)[0]), lines) == (
            400,
            {"status": "refused"},
        )
        reason = "forwarded_for_unreadable"
        assert push.sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason=reason) == 1
    assert push.count(db_url, "sms_callback") == 0


def test_previous_password_is_accepted_during_rotation(db_url: str) -> None:
    """Both the new and the previous password are accepted while the rotation window is open."""
    with push.running_receiver(db.connector(db_url), previous=push.PREVIOUS) as r:
        first, second = push.messages(2)
        assert push.post(r.port, push.envelope(first))[0] == 200
        assert push.post(r.port, push.envelope(second, password=push.PREVIOUS))[0] == 200
    assert len(push.history(db_url)) == 2


def test_a_replayed_callback_changes_nothing_in_the_history(db_url: str) -> None:
    """The same body twice: one row, the second answer inserts nothing, the kept body is seen twice."""
    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 0})
    assert len(push.history(db_url)) == 1
    with psycopg.connect(db_url) as conn:
        kept = conn.execute("SELECT seen_count, body, body_exact FROM sms_callback").fetchall()
    assert len(kept) == 1
    seen_count, stored_body, exact = kept[0]
    assert (seen_count, exact) == (2, True)
    # Byte for byte but the password value.
    assert bytes(stored_body) == body.replace(push.PASSWORD.encode(), callbacks.REDACTED.encode())


def test_an_unknown_shape_is_kept_reported_and_answered_200(db_url: str, log_buffer: io.StringIO) -> None:
    """A body with credentials but no message shape we know: 200, kept in sms_callback, reported."""
    body = json.dumps(
        {
            "username": push.USER,
            "password": push.PASSWORD,
            "requestId": "r-1",
            "somethingNew": {"payload": [1, 2]},
        }
    ).encode()
    with push.running_receiver(db.connector(db_url)) as r:
        status, answer = push.post(r.port, body)
        assert (status, answer["status"]) == (200, "kept")
        assert (
            push.sample(r.metrics, "thingspace_sync_callbacks_kept_unknown_total", account=push.ACCOUNT) == 1
        )
    assert push.count(db_url, "sms_history") == 0
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT shape, problem, request_id FROM sms_callback").fetchone()
    assert row == ("unknown", "no known message shape (keys: requestId, somethingNew)", "r-1")
    assert '"callback_kept_unknown_shape"' in log_buffer.getvalue()


def test_flat_callbacks_without_timestamp_are_stored_with_what_identity_they_have(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The published SOAP-like shape (no timestamp, no requestId): every delivery is a row, flagged."""
    push_sim.config.callback_shape = "flat"
    sent = push.messages(5)
    push_sim.inject(push.ACCOUNT, sent)
    with push.running_receiver(db.connector(db_url)) as r:
        env = push.env_for(push_sim, db_url, r.port)
        assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
        assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(30)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT message, received_at, problems FROM sms_history ORDER BY message"
        ).fetchall()
    assert [r[0] for r in rows] == sorted(m["message"] for m in sent)
    assert all(r[1] is None and any("receipt time" in p for p in r[2]) for r in rows)
