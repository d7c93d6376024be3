"""Push mode end to end: the simulator pushes over real HTTP to the receiver, which stores into a
real Postgres; polling drains whatever push could not deliver. Every message lands exactly once."""

from __future__ import annotations

import psycopg
import pytest

from sync_worker import db, simulator
from tests.integration import push
from tests.reliability import proxy

# The shared fixtures (tests/integration/push.py), registered for this module.
log_buffer = push.log_buffer
push_sim = push.push_sim


def test_register_start_delivery_and_every_pushed_message_is_stored_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """register, start-delivery, 120 messages pushed: 120 rows, source 'push', the queue empty."""
    sent = push.messages(120)
    push_sim.inject(push.ACCOUNT, sent)
    with push.running_receiver(db.connector(db_url)) as r:
        port = r.port
        env = push.env_for(push_sim, db_url, port)
        code, out, err = push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)
        assert code == 0, err
        assert push.last_json(out)["url"] == f"http://127.0.0.1:{r.port}/callbacks/{push.ACCOUNT}"
        code, out, _ = push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")
        assert code == 0, out
        assert push_sim.push.wait_idle(60)
        assert (
            push.sample(
                r.metrics, "thingspace_sync_callbacks_stored_total", account=push.ACCOUNT, shape="envelope"
            )
            == 120
        )
    assert push.history(db_url) == sorted((m, "push") for m in push.canonical(sent))
    assert push_sim.queued(push.ACCOUNT) == []
    assert push.canonical(push_sim.pushed(push.ACCOUNT)) == push.canonical(sent)
    assert push.count(db_url, "sms_callback") == 120
    # Messages that arrive after startCallbacks are pushed, not queued.
    late = push.messages(5, start=500)
    with push.running_receiver(db.connector(db_url), port=port):
        push_sim.inject(push.ACCOUNT, late)
        assert push_sim.push.wait_idle(30)
    assert len(push.history(db_url)) == 125


def test_receiver_down_for_a_while_loses_nothing_retried_or_requeued_and_polled(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deliveries to a receiver that is down fail; those retried after it came up are stored, those
    that ran out of attempts go back to the queue, and a poll pass stores them: 80 messages, 80 rows."""
    push_sim.config.callback_retry_seconds = 0.3
    push_sim.config.callback_attempts = 4
    sent = push.messages(80)
    push_sim.inject(push.ACCOUNT, sent)
    port = push.free_port()
    env = push.env_for(push_sim, db_url, port)
    code, out, _ = push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)
    assert code == 0, out
    code, out, _ = push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")
    assert code == 0, out
    # Every message failed at least once before the receiver comes up.
    assert push_sim.push.wait_for(lambda c: c.failed_attempts >= len(sent), 60)
    with push.running_receiver(db.connector(db_url), port=port):
        assert push_sim.push.wait_idle(60)
    counters = push_sim.push.counters
    assert counters.delivered + counters.requeued == len(sent)
    code, out, _ = push.run_cli(capsys, env, "once")
    assert code == 0, out
    rows = push.history(db_url)
    assert [m for m, _ in rows] == push.canonical(sent)
    assert sum(1 for _, source in rows if source == "poll") == counters.requeued
    assert push_sim.queued(push.ACCOUNT) == []


def test_duplicated_and_reordered_pushes_store_each_message_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every callback delivered twice, in shuffled order: 60 rows, 60 redeliveries absorbed."""
    push_sim.config.callback_duplicate_rate = 1.0
    push_sim.config.callback_reorder = True
    sent = push.messages(60)
    push_sim.inject(push.ACCOUNT, sent)
    with push.running_receiver(db.connector(db_url)) as r:
        env = push.env_for(push_sim, db_url, r.port)
        assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
        assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
        assert push_sim.push.counters.duplicates == 60
        assert (
            push.sample(r.metrics, "thingspace_sync_callback_messages_replayed_total", account=push.ACCOUNT)
            == 60
        )
    assert push.history(db_url) == sorted((m, "push") for m in push.canonical(sent))
    with psycopg.connect(db_url) as conn:
        seen = conn.execute("SELECT seen_count, count(*) FROM sms_callback GROUP BY 1").fetchall()
    assert seen == [(2, 60)]


def test_a_pushed_message_whose_2xx_was_lost_is_polled_too_and_stored_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored by the receiver, its 2xx lost, re-queued and polled: the message key collides, one row."""
    push_sim.config.callback_attempts = 1
    sent = push.messages(30)
    push_sim.inject(push.ACCOUNT, sent)
    push_sim.push.lose_answers(30)
    with push.running_receiver(db.connector(db_url)) as r:
        env = push.env_for(push_sim, db_url, r.port)
        assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
        assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
    assert push_sim.push.counters.requeued == 30
    assert len(push_sim.queued(push.ACCOUNT)) == 30
    code, out, _ = push.run_cli(capsys, env, "once")
    assert code == 0, out
    result = push.last_json(out)
    assert (result["received"], result["inserted"]) == (30, 0)
    assert push.history(db_url) == sorted((m, "push") for m in push.canonical(sent))


def test_database_down_answers_503_and_the_retried_delivery_is_stored(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Postgres cut the receiver answers 503 (nothing acknowledged); after it is back, the
    platform's next attempt is stored."""
    push_sim.config.callback_retry_seconds = 0.2
    push_sim.config.callback_attempts = 10
    sent = push.messages(3)
    with proxy.PgProxy(db_url) as pg, push.running_receiver(db.connector(pg.conninfo())) as r:
        env = push.env_for(push_sim, db_url, r.port)
        assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
        assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
        pg.cut()
        push_sim.inject(push.ACCOUNT, sent)
        assert push_sim.push.wait_for(lambda c: c.failed_attempts >= 3, 60)
        assert (
            push.sample(
                r.metrics, "thingspace_sync_callback_store_failures_total", kind="database_unavailable"
            )
            >= 3
        )
        assert push.count(db_url, "sms_history") == 0
        pg.restore()
        assert push_sim.push.wait_idle(60)
    assert push.history(db_url) == sorted((m, "push") for m in push.canonical(sent))
    assert push_sim.push.counters.requeued == 0
