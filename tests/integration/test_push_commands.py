"""Push mode's commands: registering and removing the listener, the receive command's callbacks,
health, metrics and SIGTERM, the kept-callbacks listing."""

from __future__ import annotations

import json
import signal
import urllib.error

import pytest

from sync_worker import callbacks, db, simulator
from tests.integration import push
from tests.integration import test_cli_e2e as e2e
from tests.reliability import crash

# The shared fixtures (tests/integration/push.py), registered for this module.
log_buffer = push.log_buffer
push_sim = push.push_sim


def probe(url: str) -> int:
    """The status of a GET, 0 while nothing listens yet."""
    try:
        return e2e.http_get(url)[0]
    except urllib.error.URLError:
        return 0


def test_register_refuses_a_foreign_listener_list_hides_passwords_remove_guards_too(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """register refuses to replace another listener without --replace; list shows no password;
    remove refuses a foreign listener without --force and removes ours."""
    env = push.env_for(push_sim, db_url, 9005)
    foreign = "https://someone-else.example.com/hook"
    env_other = {**env, "SYNC_CALLBACK_PASSWORD": "their-password-123"}
    code, out, _ = push.run_cli(
        capsys, env_other, "callbacks", "register", "--account", push.ACCOUNT, "--url", foreign
    )
    assert code == 0, out
    code, _, err = push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)
    assert code == 2
    assert "--replace" in err and foreign in err
    code, out, _ = push.run_cli(capsys, env, "callbacks", "list", "--account", push.ACCOUNT, "--json")
    assert code == 0
    listed = push.last_json(out)["listeners"]
    assert [(item["url"], item["password"]) for item in listed] == [(foreign, "(set)")]
    assert "their-password-123" not in out
    code, _, err = push.run_cli(capsys, env, "callbacks", "remove", "--account", push.ACCOUNT)
    assert code == 2 and "--force" in err
    code, out, _ = push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT, "--replace")
    assert code == 0 and push.last_json(out)["replaced"] == foreign
    code, out, _ = push.run_cli(capsys, env, "callbacks", "remove", "--account", push.ACCOUNT)
    assert code == 0 and push.last_json(out)["removed"] == f"http://127.0.0.1:9005/callbacks/{push.ACCOUNT}"
    code, out, _ = push.run_cli(capsys, env, "callbacks", "list", "--account", push.ACCOUNT, "--json")
    assert push.last_json(out) == {"listeners": []}


def test_receive_command_serves_callbacks_health_and_metrics_and_stops_on_sigterm(db_url: str) -> None:
    """`sync-worker receive`: /healthz and /readyz 200, a callback stored, counted in /metrics and logged
    at debug, SIGTERM exits 0; no secret in its output, debug lines included."""
    callback_port, metrics_port = push.free_port(), push.free_port()
    env = simulator.worker_env(
        "http://127.0.0.1:1/api",
        accounts=[push.ACCOUNT],
        database_url=db_url,
        inherit=True,
        SYNC_CALLBACK_USERNAME=push.USER,
        SYNC_CALLBACK_PASSWORD=push.PASSWORD,
        SYNC_CALLBACK_HOST="127.0.0.1",
        SYNC_CALLBACK_PORT=str(callback_port),
        SYNC_METRICS_PORT=str(metrics_port),
        SYNC_LOG_FORMAT="json",
        # Each stored callback is a debug line (a line per callback cost a fifth of the CPU).
        SYNC_LOG_LEVEL="DEBUG",
    )
    worker = crash.Worker(["receive"], env, "receiver")
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        crash.wait_until(lambda: probe(base + "/healthz") == 200, 30, "the receiver's /healthz")
        assert e2e.http_get(base + "/readyz")[0] == 200
        assert push.post(callback_port, push.envelope(push.messages(1)[0])) == (
            200,
            {"status": "stored", "messages": 1, "inserted": 1},
        )
        _, text = e2e.http_get(base + "/metrics")
        assert (
            f'thingspace_sync_callbacks_stored_total{{account="{push.ACCOUNT}",shape="envelope"}} 1.0' in text
        )
        worker.proc.send_signal(signal.SIGTERM)
    finally:
        code = worker.wait(30)
    assert code == 0, worker.stderr
    assert push.PASSWORD not in worker.stdout + worker.stderr
    assert '"callback_stored"' in worker.stdout
    assert push.history(db_url) == [(push.canonical(push.messages(1))[0], "push")]


def test_removing_the_listener_switches_back_to_polling_without_loss(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """callbacks remove while pushes are failing: they go back to the queue, later messages are queued,
    and a poll pass stores all of them."""
    push_sim.config.callback_retry_seconds = 0.2
    sent = push.messages(20)
    push_sim.inject(push.ACCOUNT, sent)
    env = push.env_for(push_sim, db_url, push.free_port())
    assert push.run_cli(capsys, env, "callbacks", "register", "--account", push.ACCOUNT)[0] == 0
    assert push.run_cli(capsys, env, "start-delivery", "--account", push.ACCOUNT, "--yes")[0] == 0
    code, out, _ = push.run_cli(capsys, env, "callbacks", "remove", "--account", push.ACCOUNT)
    assert code == 0, out
    assert push_sim.push.wait_idle(60)
    later = push.messages(5, start=100)
    push_sim.inject(push.ACCOUNT, later)
    assert push_sim.push.counters.delivered == 0
    assert len(push_sim.queued(push.ACCOUNT)) == 25
    code, out, _ = push.run_cli(capsys, env, "once")
    assert code == 0, out
    assert push.history(db_url) == sorted((m, "poll") for m in push.canonical(sent + later))


def test_callbacks_kept_lists_unknown_shapes_without_their_body(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`callbacks kept --json` lists the kept unknown-shape callback: id, problem, size; no body."""
    body = json.dumps({"username": push.USER, "password": push.PASSWORD, "mystery": 1}).encode()
    with push.running_receiver(db.connector(db_url)) as r:
        assert push.post(r.port, body)[0] == 200
    env = {"SYNC_DATABASE_URL": db_url, "SYNC_LOG_FORMAT": "json"}
    code, out, _ = push.run_cli(capsys, env, "callbacks", "kept", "--json")
    assert code == 0
    (kept,) = push.last_json(out)["kept"]
    assert (kept["account_name"], kept["problem"]) == (push.ACCOUNT, "no known message shape (keys: mystery)")
    assert kept["body_size"] == len(body.replace(push.PASSWORD.encode(), callbacks.REDACTED.encode()))
    assert "body" not in kept
