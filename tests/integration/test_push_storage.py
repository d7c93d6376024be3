"""Nothing authenticated is unstorable: values Postgres cannot hold, unexpected failures, and the
identity of pushed members the model does not know, matched with their polled copies."""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg
import pytest

from sync_worker import db, simulator
from tests.integration import push

# The shared fixtures (tests/integration/push.py), registered for this module.
log_buffer = push.log_buffer
push_sim = push.push_sim


def kept_rows(db_url: str) -> list[tuple[Any, ...]]:
    """(shape, problem, request_id, callback_count, messages) of every kept callback, by id."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT shape, problem, request_id, callback_count, messages FROM sms_callback ORDER BY id"
        ).fetchall()


@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone-surrogate"])
def test_a_request_id_postgres_cannot_hold_is_cleaned_noted_and_the_callback_stored(
    db_url: str, bad: str
) -> None:
    """A requestId with NUL or a lone surrogate: 200, the message stored, the id kept with U+FFFD, noted."""
    body = push.envelope(push.messages(1)[0], requestId=f"req{bad}1")
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    assert push.history(db_url) == [(push.canonical(push.messages(1))[0], "push")]
    ((shape, problem, request_id, _, stored),) = kept_rows(db_url)
    assert (shape, request_id, stored) == ("envelope", "req\ufffd1", 1)
    assert problem == "requestId had NUL or lone surrogate characters; replaced with U+FFFD"


def test_a_callback_count_beyond_an_integer_is_kept_null_with_a_note(db_url: str) -> None:
    """callbackCount 2^31: 200, the message stored, callback_count NULL and the reason in problem."""
    body = push.envelope(push.messages(1)[0], callbackCount=2**31)
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body)[0] == 200
    assert len(push.history(db_url)) == 1
    ((shape, problem, _, callback_count, _),) = kept_rows(db_url)
    assert (shape, callback_count) == ("envelope", None)
    assert problem == "callbackCount (32 bits) is out of range of an integer; kept as NULL"


def test_an_unexpected_failure_answers_500_keeps_the_body_and_a_redelivery_stores_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch, log_buffer: io.StringIO
) -> None:
    """A bug while storing: a deliberate 500, the body kept unread (shape unknown, the failure named);
    the platform's redelivery of the same body, read fine, stores the message and upgrades the row."""
    from sync_worker import rows  # noqa: PLC0415  # only this test patches it

    real = rows.build_rows

    def broken(account: str, found: Any) -> list[rows.Row]:
        found = list(found)
        if found:
            raise RuntimeError("a bug the receiver did not foresee")
        return real(account, found)

    body = push.envelope(push.messages(1)[0])
    with push.running_receiver(db.connector(db_url)) as r:
        monkeypatch.setattr(rows, "build_rows", broken)
        assert push.post(r.port, body) == (500, {"status": "error"})
        assert push.sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="unexpected") == 1
        assert push.count(db_url, "sms_history") == 0
        ((shape, problem, *_),) = kept_rows(db_url)
        assert shape == "unknown"
        assert problem == "the receiver could not store it (unexpected: RuntimeError); answered 500"
        monkeypatch.setattr(rows, "build_rows", real)
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    assert push.history(db_url) == [(push.canonical(push.messages(1))[0], "push")]
    assert kept_rows(db_url) == [("envelope", None, "7f1c1a6e-0000-4000-8000-000000000001", 1, 1)]
    logged = log_buffer.getvalue()
    assert '"callback_kept_unread"' in logged
    assert "a bug the receiver did not foresee" not in logged


def test_a_nested_upper_case_push_and_the_polled_lower_case_copy_are_one_row(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message pushed in the NIDD nesting with upper-case kinds, then polled with lower-case ones
    (its 2xx lost, say): one row, source 'push'; the poll counts it as a replay."""
    (polled,) = push.messages(1)
    inner = {**polled, "deviceIds": [{"id": d["id"], "kind": d["kind"].upper()} for d in polled["deviceIds"]]}
    body = json.dumps(
        {
            "username": push.USER,
            "password": push.PASSWORD,
            "requestId": "595f5c44-c31c-4552-8670-020a1545a84d",
            "deviceIds": inner["deviceIds"],
            "niddResponse": {"niddMONotificationResponse": {"accountName": push.ACCOUNT, **inner}},
            "callbackCount": 1,
            "maxCallbackThreshold": 2,
        }
    ).encode()
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    push_sim.inject(push.ACCOUNT, [polled])
    code, out, _ = push.run_cli(capsys, push.env_for(push_sim, db_url, push.free_port()), "once")
    assert code == 0, out
    assert (push.last_json(out)["received"], push.last_json(out)["inserted"]) == (1, 0)
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT device_kind, message, source FROM sms_history").fetchall()
    assert stored == [("imei", polled["message"], "push")]


def with_message_ids(n: int) -> list[dict[str, Any]]:
    """``n`` messages in pairs that differ only in a ``messageId`` member the model does not know."""
    return [{**m, "messageId": f"mid-{i}-{j}"} for i, m in enumerate(push.messages(n // 2)) for j in range(2)]


def test_messages_differing_only_in_an_unknown_member_are_two_rows_pushed_and_polled(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pairs of messages that differ only in messageId are all stored when pushed, and polling the
    same messages again (their 2xx was lost, they went back to the queue) adds no row."""
    push_sim.config.callback_attempts = 1
    sent = with_message_ids(10)
    push_sim.inject(push.ACCOUNT, sent)
    push_sim.push.lose_answers(10)
    with push.running_receiver(db.connector(db_url)) as r:
        env = push.env_for(push_sim, db_url, r.port)
        assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
        assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
    assert len(push_sim.queued(push.ACCOUNT)) == 10
    code, out, _ = push.run_cli(capsys, env, "once")
    assert code == 0, out
    assert (push.last_json(out)["received"], push.last_json(out)["inserted"]) == (10, 0)
    assert push.history(db_url) == sorted((m, "push") for m in push.canonical(sent))


def test_a_pushed_copy_naming_the_account_in_other_case_kinds_matches_its_polled_copy(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pushed message carries accountName and upper-case kinds (as real device callbacks do), its
    polled copy neither: one row (the account is in the key already; kinds are case-folded). The
    same message with another messageId is another row."""
    polled = {**push.messages(1)[0], "messageId": "mid-1"}
    pushed = {
        "accountName": push.ACCOUNT,
        "messageId": "mid-1",
        "message": polled["message"],
        "timestamp": polled["timestamp"],
        "deviceIds": [{"id": d["id"], "kind": d["kind"].upper()} for d in polled["deviceIds"]],
    }
    other = {**polled, "messageId": "mid-2"}
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, push.envelope(pushed)) == (
            200,
            {"status": "stored", "messages": 1, "inserted": 1},
        )
    push_sim.inject(push.ACCOUNT, [polled, other])
    code, out, _ = push.run_cli(
        capsys, push_sim.worker_env(accounts=[push.ACCOUNT], database_url=db_url), "once"
    )
    assert code == 0, out
    assert (push.last_json(out)["received"], push.last_json(out)["inserted"]) == (2, 1)
    assert sorted(source for _, source in push.history(db_url)) == ["poll", "push"]


def test_callbacks_after_every_receiver_connection_was_ended_are_stored_not_refused(db_url: str) -> None:
    """Every kept receiver connection ended by the server (a restart, a failover): the next callbacks
    are stored (200), each on a connection proved by a ping and replaced when dead, not answered 503."""
    import uuid  # noqa: PLC0415  # only this test names its sessions

    name = f"receiver-{uuid.uuid4().hex[:12]}"
    bodies = [push.envelope(m, requestId=f"t-{i}") for i, m in enumerate(push.messages(6))]
    with (
        push.running_receiver(db.connector(db_url, application_name=name)) as r,
        psycopg.connect(db_url) as admin,
    ):
        assert push.post(r.port, bodies[0])[0] == 200
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchone()
        assert ended is not None and ended[0] >= 1
        assert [push.post(r.port, b)[0] for b in bodies[1:]] == [200] * 5
        assert (
            push.sample(
                r.metrics, "thingspace_sync_callback_store_failures_total", kind="database_unavailable"
            )
            == 0
        )
    assert len(push.history(db_url)) == 6
