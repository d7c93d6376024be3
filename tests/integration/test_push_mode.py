"""Push mode end to end: the simulator pushes over real HTTP to the receiver, which stores into a
real Postgres; polling drains whatever push could not deliver. Every message lands exactly once."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import signal
import socket
import urllib.error
from collections.abc import Iterator
from typing import Any

import prometheus_client
import psycopg
import pytest
import structlog

from sync_worker import callback_metrics, callbacks, cli, db, logs, receiver, secret, simulator
from tests.integration import test_cli_e2e as e2e
from tests.reliability import crash, proxy

ACCOUNT = "0252012345-00091"
OTHER = "0252012345-00092"
USER = "sms-listener"
PASSWORD = "listener-password-0123456789"  # a test value
PREVIOUS = "listener-password-previous"  # a test value


_log_stream: list[io.StringIO] = []


@pytest.fixture(autouse=True)
def log_buffer() -> Iterator[io.StringIO]:
    """The worker's JSON log events of this test (the receiver's and the CLI's)."""
    buffer = io.StringIO()
    _log_stream.append(buffer)
    logs.configure("json", "INFO", buffer)
    yield buffer
    _log_stream.remove(buffer)
    structlog.reset_defaults()


@pytest.fixture
def push_sim() -> Iterator[simulator.Simulator]:
    """A simulator whose callback retries are scaled down from minutes to 50 ms."""
    sim = simulator.Simulator(
        simulator.SimConfig(
            accounts=(ACCOUNT, OTHER),
            callback_retry_seconds=0.05,
            callback_attempts=3,
            callback_timeout=5.0,
        )
    )
    with sim:
        yield sim


@contextlib.contextmanager
def running_receiver(
    connect: db.ConnectionFactory,
    *,
    port: int = 0,
    accounts: tuple[str, ...] = (ACCOUNT,),
    previous: str | None = None,
    allowed: tuple[str, ...] = (),
    trusted: tuple[str, ...] = (),
    **tuning: Any,
) -> Iterator[receiver.Receiver]:
    import ipaddress  # noqa: PLC0415  # only this helper needs it

    credentials = callbacks.ListenerCredentials(
        USER, secret.Secret(PASSWORD), secret.Secret(previous) if previous else None
    )
    config = receiver.ReceiverConfig(
        accounts=frozenset(accounts),
        credentials=credentials,
        port=port,
        allowed_sources=tuple(ipaddress.ip_network(a) for a in allowed),
        trusted_proxies=tuple(ipaddress.ip_network(a) for a in trusted),
        **tuning,
    )
    metrics = callback_metrics.CallbackMetrics(prometheus_client.CollectorRegistry())
    with receiver.Receiver(config, connect, metrics) as started:
        yield started


def messages(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct history-shaped messages (distinct: messages have no id, see docs/schema.md)."""
    return [
        {
            "deviceIds": [{"id": f"{350000000000000 + i}", "kind": "imei"}],
            "message": f"push reading {i}",
            "timestamp": f"2026-02-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
        }
        for i in range(start, start + n)
    ]


def canonical(items: list[Any]) -> list[str]:
    return sorted(json.dumps(m, sort_keys=True) for m in items)


def history(db_url: str, account: str = ACCOUNT) -> list[tuple[str, str]]:
    """(canonical raw message, source) of every stored row of ``account``."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT raw_json, source FROM sms_history WHERE account_name = %s", (account,)
        ).fetchall()
    return sorted((json.dumps(json.loads(r[0]), sort_keys=True), str(r[1])) for r in rows)


def count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # fixed names
    assert row is not None
    return int(row[0])


def env_for(sim: simulator.Simulator, db_url: str, port: int) -> dict[str, str]:
    return sim.worker_env(
        accounts=[ACCOUNT],
        database_url=db_url,
        SYNC_CALLBACK_URL=f"http://127.0.0.1:{port}",
        SYNC_CALLBACK_USERNAME=USER,
        SYNC_CALLBACK_PASSWORD=PASSWORD,
        SYNC_LOG_FORMAT="json",
        THINGSPACE_RETRY_MAX_WAIT="0.2",
    )


def run_cli(capsys: pytest.CaptureFixture[str], env: dict[str, str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args), env=env)
    out, err = capsys.readouterr()
    # The command pointed logging at the captured streams; back to this test's buffer.
    logs.configure("json", "INFO", _log_stream[-1])
    for value in (PASSWORD, PREVIOUS, "sim-password", "sim-client-secret"):
        assert value not in out + err, f"a secret leaked from {args}"
    return code, out, err


def last_json(out: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(
    port: int,
    body: bytes,
    *,
    path: str = f"/callbacks/{ACCOUNT}",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def envelope(message: Any, *, password: str = PASSWORD, **extra: Any) -> bytes:
    body = {
        "username": USER,
        "password": password,
        "requestId": "7f1c1a6e-0000-4000-8000-000000000001",
        "deviceIds": message.get("deviceIds") if isinstance(message, dict) else None,
        "enhancedConnectivityResponse": message,
        "callbackCount": 1,
        "maxCallbackThreshold": 4,
        **extra,
    }
    return json.dumps(body).encode()


def probe(url: str) -> int:
    """The status of a GET, 0 while nothing listens yet."""
    try:
        return e2e.http_get(url)[0]
    except urllib.error.URLError:
        return 0


def sample(metrics: callback_metrics.CallbackMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# --- the flows -------------------------------------------------------------------


def test_register_start_delivery_and_every_pushed_message_is_stored_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """register, start-delivery, 120 messages pushed: 120 rows, source 'push', the queue empty."""
    sent = messages(120)
    push_sim.inject(ACCOUNT, sent)
    with running_receiver(db.connector(db_url)) as r:
        port = r.port
        env = env_for(push_sim, db_url, port)
        code, out, err = run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)
        assert code == 0, err
        assert last_json(out)["url"] == f"http://127.0.0.1:{r.port}/callbacks/{ACCOUNT}"
        code, out, _ = run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")
        assert code == 0, out
        assert push_sim.push.wait_idle(60)
        assert (
            sample(r.metrics, "thingspace_sync_callbacks_stored_total", account=ACCOUNT, shape="envelope")
            == 120
        )
    assert history(db_url) == sorted((m, "push") for m in canonical(sent))
    assert push_sim.queued(ACCOUNT) == []
    assert canonical(push_sim.pushed(ACCOUNT)) == canonical(sent)
    assert count(db_url, "sms_callback") == 120
    # Messages that arrive after startCallbacks are pushed, not queued.
    late = messages(5, start=500)
    with running_receiver(db.connector(db_url), port=port):
        push_sim.inject(ACCOUNT, late)
        assert push_sim.push.wait_idle(30)
    assert len(history(db_url)) == 125


def test_receiver_down_for_a_while_loses_nothing_retried_or_requeued_and_polled(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deliveries to a receiver that is down fail; those retried after it came up are stored, those
    that ran out of attempts go back to the queue, and a poll pass stores them: 80 messages, 80 rows."""
    push_sim.config.callback_retry_seconds = 0.3
    push_sim.config.callback_attempts = 4
    sent = messages(80)
    push_sim.inject(ACCOUNT, sent)
    port = free_port()
    env = env_for(push_sim, db_url, port)
    code, out, _ = run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)
    assert code == 0, out
    code, out, _ = run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")
    assert code == 0, out
    # Every message failed at least once before the receiver comes up.
    assert push_sim.push.wait_for(lambda c: c.failed_attempts >= len(sent), 60)
    with running_receiver(db.connector(db_url), port=port):
        assert push_sim.push.wait_idle(60)
    counters = push_sim.push.counters
    assert counters.delivered + counters.requeued == len(sent)
    code, out, _ = run_cli(capsys, env, "once")
    assert code == 0, out
    rows = history(db_url)
    assert [m for m, _ in rows] == canonical(sent)
    assert sum(1 for _, source in rows if source == "poll") == counters.requeued
    assert push_sim.queued(ACCOUNT) == []


def test_duplicated_and_reordered_pushes_store_each_message_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every callback delivered twice, in shuffled order: 60 rows, 60 redeliveries absorbed."""
    push_sim.config.callback_duplicate_rate = 1.0
    push_sim.config.callback_reorder = True
    sent = messages(60)
    push_sim.inject(ACCOUNT, sent)
    with running_receiver(db.connector(db_url)) as r:
        env = env_for(push_sim, db_url, r.port)
        assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
        assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
        assert push_sim.push.counters.duplicates == 60
        assert sample(r.metrics, "thingspace_sync_callback_messages_replayed_total", account=ACCOUNT) == 60
    assert history(db_url) == sorted((m, "push") for m in canonical(sent))
    with psycopg.connect(db_url) as conn:
        seen = conn.execute("SELECT seen_count, count(*) FROM sms_callback GROUP BY 1").fetchall()
    assert seen == [(2, 60)]


def test_a_pushed_message_whose_2xx_was_lost_is_polled_too_and_stored_once(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored by the receiver, its 2xx lost, re-queued and polled: the message key collides, one row."""
    push_sim.config.callback_attempts = 1
    sent = messages(30)
    push_sim.inject(ACCOUNT, sent)
    push_sim.push.lose_answers(30)
    with running_receiver(db.connector(db_url)) as r:
        env = env_for(push_sim, db_url, r.port)
        assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
        assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
    assert push_sim.push.counters.requeued == 30
    assert len(push_sim.queued(ACCOUNT)) == 30
    code, out, _ = run_cli(capsys, env, "once")
    assert code == 0, out
    result = last_json(out)
    assert (result["received"], result["inserted"]) == (30, 0)
    assert history(db_url) == sorted((m, "push") for m in canonical(sent))


def test_database_down_answers_503_and_the_retried_delivery_is_stored(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Postgres cut the receiver answers 503 (nothing acknowledged); after it is back, the
    platform's next attempt is stored."""
    push_sim.config.callback_retry_seconds = 0.2
    push_sim.config.callback_attempts = 10
    sent = messages(3)
    with proxy.PgProxy(db_url) as pg, running_receiver(db.connector(pg.conninfo())) as r:
        env = env_for(push_sim, db_url, r.port)
        assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
        assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
        pg.cut()
        push_sim.inject(ACCOUNT, sent)
        assert push_sim.push.wait_for(lambda c: c.failed_attempts >= 3, 60)
        assert (
            sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="database_unavailable")
            >= 3
        )
        assert count(db_url, "sms_history") == 0
        pg.restore()
        assert push_sim.push.wait_idle(60)
    assert history(db_url) == sorted((m, "push") for m in canonical(sent))
    assert push_sim.push.counters.requeued == 0


# --- refusals, replays, unknown shapes -------------------------------------------------


def test_refusals_store_nothing_and_never_log_the_body_or_password(
    db_url: str, log_buffer: io.StringIO
) -> None:
    """Wrong password, foreign account, account mismatch, oversized, non-JSON, wrong media type,
    no such route: each refused with its status, nothing stored, the sent password in no log."""
    good = messages(1)[0]
    wrong = "not-the-password-9876"
    with running_receiver(db.connector(db_url)) as r:
        cases = [
            (post(r.port, envelope(good, password=wrong)), 403),
            (post(r.port, envelope(good), path=f"/callbacks/{OTHER}"), 403),
            (post(r.port, envelope(good, accountName=OTHER)), 403),
            (post(r.port, b"{" + b" " * 70_000 + b"}"), 413),
            (post(r.port, b"username=a&password=b"), 400),
            (post(r.port, envelope(good), content_type="text/plain"), 415),
            (post(r.port, envelope(good), path="/elsewhere"), 404),
        ]
        for (status, body), expected in cases:
            assert (status, body) == (expected, {"status": "refused"})
        refused = {
            reason: sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason=reason)
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
    assert count(db_url, "sms_history") == 0
    assert count(db_url, "sms_callback") == 0
    logged = log_buffer.getvalue()
    assert logged.count('"callback_refused"') == len(cases)
    assert wrong not in logged
    assert PASSWORD not in logged
    assert good["message"] not in logged


def test_source_allowlist_refuses_other_addresses_before_reading(db_url: str) -> None:
    """With only 10.0.0.0/8 allowed, a loopback caller with the right credentials gets 403."""
    with running_receiver(db.connector(db_url), allowed=("10.0.0.0/8",)) as r:
        assert post(r.port, envelope(messages(1)[0])) == (403, {"status": "refused"})
        assert sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason="source_not_allowed") == 1
    assert count(db_url, "sms_history") == 0


def post_forwarded(port: int, body: bytes, lines: list[str]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` with one ``X-Forwarded-For`` header line per item of ``lines``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", f"/callbacks/{ACCOUNT}")
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
    body = envelope(messages(1)[0])
    with running_receiver(db.connector(db_url), allowed=("10.0.0.0/8",), trusted=("127.0.0.1/32",)) as r:
        assert post_forwarded(r.port, body, ["10.1.2.3", "203.0.113.9"]) == (403, {"status": "refused"})
        assert sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason="source_not_allowed") == 1
        # The same caller really at an allowed address, through the proxy: accepted.
        assert post_forwarded(r.port, body, ["203.0.113.9", "10.1.2.3"])[0] == 200
    assert len(history(db_url)) == 1


@pytest.mark.parametrize(
    "lines",
    [["10.1.2.3, unknown"], ["10.1.2.3", ""], ["10.1.2.3:4711"], ["10.1.2.3,,127.0.0.1"]],
    ids=["word", "empty-line", "port", "empty-hop"],
)
def test_a_forwarded_for_that_cannot_be_read_unambiguously_is_refused(db_url: str, lines: list[str]) -> None:
    """From a trusted proxy, an X-Forwarded-For hop that is not a plain address where the client is
    read: 400 forwarded_for_unreadable, nothing stored, even with no allowlist."""
    with running_receiver(db.connector(db_url), trusted=("127.0.0.1/32",)) as r:
        assert post_forwarded(r.port, envelope(messages(1)[0]), lines) == (400, {"status": "refused"})
        reason = "forwarded_for_unreadable"
        assert sample(r.metrics, "thingspace_sync_callbacks_refused_total", reason=reason) == 1
    assert count(db_url, "sms_callback") == 0


def test_previous_password_is_accepted_during_rotation(db_url: str) -> None:
    """Both the new and the previous password are accepted while the rotation window is open."""
    with running_receiver(db.connector(db_url), previous=PREVIOUS) as r:
        first, second = messages(2)
        assert post(r.port, envelope(first))[0] == 200
        assert post(r.port, envelope(second, password=PREVIOUS))[0] == 200
    assert len(history(db_url)) == 2


def test_a_replayed_callback_changes_nothing_in_the_history(db_url: str) -> None:
    """The same body twice: one row, the second answer inserts nothing, the kept body is seen twice."""
    body = envelope(messages(1)[0])
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 0})
    assert len(history(db_url)) == 1
    with psycopg.connect(db_url) as conn:
        kept = conn.execute("SELECT seen_count, body, body_exact FROM sms_callback").fetchall()
    assert len(kept) == 1
    seen_count, stored_body, exact = kept[0]
    assert (seen_count, exact) == (2, True)
    # Byte for byte but the password value.
    assert bytes(stored_body) == body.replace(PASSWORD.encode(), callbacks.REDACTED.encode())


def test_an_unknown_shape_is_kept_reported_and_answered_200(db_url: str, log_buffer: io.StringIO) -> None:
    """A body with credentials but no message shape we know: 200, kept in sms_callback, reported."""
    body = json.dumps(
        {"username": USER, "password": PASSWORD, "requestId": "r-1", "somethingNew": {"payload": [1, 2]}}
    ).encode()
    with running_receiver(db.connector(db_url)) as r:
        status, answer = post(r.port, body)
        assert (status, answer["status"]) == (200, "kept")
        assert sample(r.metrics, "thingspace_sync_callbacks_kept_unknown_total", account=ACCOUNT) == 1
    assert count(db_url, "sms_history") == 0
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT shape, problem, request_id FROM sms_callback").fetchone()
    assert row == ("unknown", "no known message shape (keys: requestId, somethingNew)", "r-1")
    assert '"callback_kept_unknown_shape"' in log_buffer.getvalue()


def test_flat_callbacks_without_timestamp_are_stored_with_what_identity_they_have(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The published SOAP-like shape (no timestamp, no requestId): every delivery is a row, flagged."""
    push_sim.config.callback_shape = "flat"
    sent = messages(5)
    push_sim.inject(ACCOUNT, sent)
    with running_receiver(db.connector(db_url)) as r:
        env = env_for(push_sim, db_url, r.port)
        assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
        assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(30)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT message, received_at, problems FROM sms_history ORDER BY message"
        ).fetchall()
    assert [r[0] for r in rows] == sorted(m["message"] for m in sent)
    assert all(r[1] is None and any("receipt time" in p for p in r[2]) for r in rows)


# --- the registration commands -------------------------------------------------------


def test_register_refuses_a_foreign_listener_list_hides_passwords_remove_guards_too(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """register refuses to replace another listener without --replace; list shows no password;
    remove refuses a foreign listener without --force and removes ours."""
    env = env_for(push_sim, db_url, 9005)
    foreign = "https://someone-else.example.com/hook"
    env_other = {**env, "SYNC_CALLBACK_PASSWORD": "their-password-123"}
    code, out, _ = run_cli(capsys, env_other, "callbacks", "register", "--account", ACCOUNT, "--url", foreign)
    assert code == 0, out
    code, _, err = run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)
    assert code == 2
    assert "--replace" in err and foreign in err
    code, out, _ = run_cli(capsys, env, "callbacks", "list", "--account", ACCOUNT, "--json")
    assert code == 0
    listed = last_json(out)["listeners"]
    assert [(item["url"], item["password"]) for item in listed] == [(foreign, "(set)")]
    assert "their-password-123" not in out
    code, _, err = run_cli(capsys, env, "callbacks", "remove", "--account", ACCOUNT)
    assert code == 2 and "--force" in err
    code, out, _ = run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT, "--replace")
    assert code == 0 and last_json(out)["replaced"] == foreign
    code, out, _ = run_cli(capsys, env, "callbacks", "remove", "--account", ACCOUNT)
    assert code == 0 and last_json(out)["removed"] == f"http://127.0.0.1:9005/callbacks/{ACCOUNT}"
    code, out, _ = run_cli(capsys, env, "callbacks", "list", "--account", ACCOUNT, "--json")
    assert last_json(out) == {"listeners": []}


def test_receive_command_serves_callbacks_health_and_metrics_and_stops_on_sigterm(db_url: str) -> None:
    """`sync-worker receive`: /healthz and /readyz 200, a callback stored, counted in /metrics and logged
    at debug, SIGTERM exits 0; no secret in its output, debug lines included."""
    callback_port, metrics_port = free_port(), free_port()
    env = simulator.worker_env(
        "http://127.0.0.1:1/api",
        accounts=[ACCOUNT],
        database_url=db_url,
        inherit=True,
        SYNC_CALLBACK_USERNAME=USER,
        SYNC_CALLBACK_PASSWORD=PASSWORD,
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
        assert post(callback_port, envelope(messages(1)[0])) == (
            200,
            {"status": "stored", "messages": 1, "inserted": 1},
        )
        _, text = e2e.http_get(base + "/metrics")
        assert f'thingspace_sync_callbacks_stored_total{{account="{ACCOUNT}",shape="envelope"}} 1.0' in text
        worker.proc.send_signal(signal.SIGTERM)
    finally:
        code = worker.wait(30)
    assert code == 0, worker.stderr
    assert PASSWORD not in worker.stdout + worker.stderr
    assert '"callback_stored"' in worker.stdout
    assert history(db_url) == [(canonical(messages(1))[0], "push")]


def test_removing_the_listener_switches_back_to_polling_without_loss(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """callbacks remove while pushes are failing: they go back to the queue, later messages are queued,
    and a poll pass stores all of them."""
    push_sim.config.callback_retry_seconds = 0.2
    sent = messages(20)
    push_sim.inject(ACCOUNT, sent)
    env = env_for(push_sim, db_url, free_port())
    assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
    assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
    code, out, _ = run_cli(capsys, env, "callbacks", "remove", "--account", ACCOUNT)
    assert code == 0, out
    assert push_sim.push.wait_idle(60)
    later = messages(5, start=100)
    push_sim.inject(ACCOUNT, later)
    assert push_sim.push.counters.delivered == 0
    assert len(push_sim.queued(ACCOUNT)) == 25
    code, out, _ = run_cli(capsys, env, "once")
    assert code == 0, out
    assert history(db_url) == sorted((m, "poll") for m in canonical(sent + later))


def test_callbacks_kept_lists_unknown_shapes_without_their_body(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`callbacks kept --json` lists the kept unknown-shape callback: id, problem, size; no body."""
    body = json.dumps({"username": USER, "password": PASSWORD, "mystery": 1}).encode()
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, body)[0] == 200
    env = {"SYNC_DATABASE_URL": db_url, "SYNC_LOG_FORMAT": "json"}
    code, out, _ = run_cli(capsys, env, "callbacks", "kept", "--json")
    assert code == 0
    (kept,) = last_json(out)["kept"]
    assert (kept["account_name"], kept["problem"]) == (ACCOUNT, "no known message shape (keys: mystery)")
    assert kept["body_size"] == len(body.replace(PASSWORD.encode(), callbacks.REDACTED.encode()))
    assert "body" not in kept


# --- nothing authenticated is unstorable ---------------------------------------------


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
    body = envelope(messages(1)[0], requestId=f"req{bad}1")
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    assert history(db_url) == [(canonical(messages(1))[0], "push")]
    ((shape, problem, request_id, _, stored),) = kept_rows(db_url)
    assert (shape, request_id, stored) == ("envelope", "req\ufffd1", 1)
    assert problem == "requestId had NUL or lone surrogate characters; replaced with U+FFFD"


def test_a_callback_count_beyond_an_integer_is_kept_null_with_a_note(db_url: str) -> None:
    """callbackCount 2^31: 200, the message stored, callback_count NULL and the reason in problem."""
    body = envelope(messages(1)[0], callbackCount=2**31)
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, body)[0] == 200
    assert len(history(db_url)) == 1
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

    body = envelope(messages(1)[0])
    with running_receiver(db.connector(db_url)) as r:
        monkeypatch.setattr(rows, "build_rows", broken)
        assert post(r.port, body) == (500, {"status": "error"})
        assert sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="unexpected") == 1
        assert count(db_url, "sms_history") == 0
        ((shape, problem, *_),) = kept_rows(db_url)
        assert shape == "unknown"
        assert problem == "the receiver could not store it (unexpected: RuntimeError); answered 500"
        monkeypatch.setattr(rows, "build_rows", real)
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    assert history(db_url) == [(canonical(messages(1))[0], "push")]
    assert kept_rows(db_url) == [("envelope", None, "7f1c1a6e-0000-4000-8000-000000000001", 1, 1)]
    logged = log_buffer.getvalue()
    assert '"callback_kept_unread"' in logged
    assert "a bug the receiver did not foresee" not in logged


def test_a_nested_upper_case_push_and_the_polled_lower_case_copy_are_one_row(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message pushed in the NIDD nesting with upper-case kinds, then polled with lower-case ones
    (its 2xx lost, say): one row, source 'push'; the poll counts it as a replay."""
    (polled,) = messages(1)
    inner = {**polled, "deviceIds": [{"id": d["id"], "kind": d["kind"].upper()} for d in polled["deviceIds"]]}
    body = json.dumps(
        {
            "username": USER,
            "password": PASSWORD,
            "requestId": "595f5c44-c31c-4552-8670-020a1545a84d",
            "deviceIds": inner["deviceIds"],
            "niddResponse": {"niddMONotificationResponse": {"accountName": ACCOUNT, **inner}},
            "callbackCount": 1,
            "maxCallbackThreshold": 2,
        }
    ).encode()
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    push_sim.inject(ACCOUNT, [polled])
    code, out, _ = run_cli(capsys, env_for(push_sim, db_url, free_port()), "once")
    assert code == 0, out
    assert (last_json(out)["received"], last_json(out)["inserted"]) == (1, 0)
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT device_kind, message, source FROM sms_history").fetchall()
    assert stored == [("imei", polled["message"], "push")]


# --- the HTTP server --------------------------------------------------------------------


def test_stalled_half_sent_requests_hold_no_worker_thread_and_callbacks_still_pass(db_url: str) -> None:
    """200 clients that send half a request and stall: no thread each (the server reads a body before a
    worker sees it), and a real callback beside them is stored at once."""
    import threading  # noqa: PLC0415  # only this test counts threads

    body = envelope(messages(1)[0])
    with running_receiver(db.connector(db_url), threads=4) as r, contextlib.ExitStack() as stack:
        before = threading.active_count()
        for _ in range(200):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", r.port), timeout=10))
            head = f"POST /callbacks/{ACCOUNT} HTTP/1.1\r\nContent-Type: application/json\r\n"
            sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:20])
        assert post(r.port, body) == (200, {"status": "stored", "messages": 1, "inserted": 1})
        # No thread per stalled client: at most a helper or two started since (old server: 200 more).
        assert threading.active_count() <= before + 2
    assert len(history(db_url)) == 1


# --- bounded database use -----------------------------------------------------------------


def post_full(port: int, body: bytes) -> tuple[int, dict[str, Any], str | None]:
    """POST a callback: status, JSON answer and its Retry-After header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/callbacks/{ACCOUNT}", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        conn.close()


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
    bodies = [envelope(m, requestId=f"r-{i}") for i, m in enumerate(messages(24))]
    with (
        # No commit wait bound: the lock is to be the only cause of the 503s. On a loaded machine a
        # batch (a new connection after each failed one, then the 1.5 s lock wait) could outlast the
        # default 3.5 s, and a callback was counted commit_timeout instead of busy (a flake).
        running_receiver(db.connector(db_url, application_name=name), pool_size=3, commit_timeout=60.0) as r,
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
            answers = list(callers.map(lambda b: post_full(r.port, b), bodies))
        finally:
            done.set()
            watcher.join()
        holder.rollback()
        assert [(a[0], a[1], a[2]) for a in answers] == [(503, {"status": "unavailable"}, "2")] * 24
        assert 1 <= most <= 3
        assert sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="busy") == 24
        assert count(db_url, "sms_history") == 0
        again = list(callers.map(lambda b: post_full(r.port, b)[0], bodies))
        assert again == [200] * 24
        assert sessions(db_url, name) <= 3
    assert len(history(db_url)) == 24


# --- identity of members the model does not know (issue 27 item 5) ----------------------


def with_message_ids(n: int) -> list[dict[str, Any]]:
    """``n`` messages in pairs that differ only in a ``messageId`` member the model does not know."""
    return [{**m, "messageId": f"mid-{i}-{j}"} for i, m in enumerate(messages(n // 2)) for j in range(2)]


def test_messages_differing_only_in_an_unknown_member_are_two_rows_pushed_and_polled(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pairs of messages that differ only in messageId are all stored when pushed, and polling the
    same messages again (their 2xx was lost, they went back to the queue) adds no row."""
    push_sim.config.callback_attempts = 1
    sent = with_message_ids(10)
    push_sim.inject(ACCOUNT, sent)
    push_sim.push.lose_answers(10)
    with running_receiver(db.connector(db_url)) as r:
        env = env_for(push_sim, db_url, r.port)
        assert run_cli(capsys, env, "callbacks", "register", "--account", ACCOUNT)[0] == 0
        assert run_cli(capsys, env, "start-delivery", "--account", ACCOUNT, "--yes")[0] == 0
        assert push_sim.push.wait_idle(60)
    assert len(push_sim.queued(ACCOUNT)) == 10
    code, out, _ = run_cli(capsys, env, "once")
    assert code == 0, out
    assert (last_json(out)["received"], last_json(out)["inserted"]) == (10, 0)
    assert history(db_url) == sorted((m, "push") for m in canonical(sent))


def test_a_pushed_copy_naming_the_account_in_other_case_kinds_matches_its_polled_copy(
    push_sim: simulator.Simulator, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pushed message carries accountName and upper-case kinds (as real device callbacks do), its
    polled copy neither: one row (the account is in the key already; kinds are case-folded). The
    same message with another messageId is another row."""
    polled = {**messages(1)[0], "messageId": "mid-1"}
    pushed = {
        "accountName": ACCOUNT,
        "messageId": "mid-1",
        "message": polled["message"],
        "timestamp": polled["timestamp"],
        "deviceIds": [{"id": d["id"], "kind": d["kind"].upper()} for d in polled["deviceIds"]],
    }
    other = {**polled, "messageId": "mid-2"}
    with running_receiver(db.connector(db_url)) as r:
        assert post(r.port, envelope(pushed)) == (200, {"status": "stored", "messages": 1, "inserted": 1})
    push_sim.inject(ACCOUNT, [polled, other])
    code, out, _ = run_cli(capsys, push_sim.worker_env(accounts=[ACCOUNT], database_url=db_url), "once")
    assert code == 0, out
    assert (last_json(out)["received"], last_json(out)["inserted"]) == (2, 1)
    assert sorted(source for _, source in history(db_url)) == ["poll", "push"]


def test_callbacks_after_every_receiver_connection_was_ended_are_stored_not_refused(db_url: str) -> None:
    """Every kept receiver connection ended by the server (a restart, a failover): the next callbacks
    are stored (200), each on a connection proved by a ping and replaced when dead, not answered 503."""
    import uuid  # noqa: PLC0415  # only this test names its sessions

    name = f"receiver-{uuid.uuid4().hex[:12]}"
    bodies = [envelope(m, requestId=f"t-{i}") for i, m in enumerate(messages(6))]
    with running_receiver(db.connector(db_url, application_name=name)) as r, psycopg.connect(db_url) as admin:
        assert post(r.port, bodies[0])[0] == 200
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchone()
        assert ended is not None and ended[0] >= 1
        assert [post(r.port, b)[0] for b in bodies[1:]] == [200] * 5
        assert (
            sample(r.metrics, "thingspace_sync_callback_store_failures_total", kind="database_unavailable")
            == 0
        )
    assert len(history(db_url)) == 6
