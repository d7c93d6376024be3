"""What the push-mode tests (test_push_*.py) share: the simulator that pushes, the receiver they
start, callback envelopes, HTTP posts, stored rows, and each test's JSON log events."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import prometheus_client
import psycopg
import pytest
import structlog

from sync_worker import callback_metrics, callbacks, cli, db, logs, receiver, secret, simulator

ACCOUNT = "0252012345-00091"


OTHER = "0252012345-00092"


USER = "sms-listener"


PASSWORD = "listener-password-0123456789"  # a test value


PREVIOUS = "listener-password-previous"  # a test value


log_stream: list[io.StringIO] = []


@pytest.fixture(autouse=True)
def log_buffer() -> Iterator[io.StringIO]:
    """The worker's JSON log events of this test (the receiver's and the CLI's)."""
    buffer = io.StringIO()
    log_stream.append(buffer)
    logs.configure("json", "INFO", buffer)
    yield buffer
    log_stream.remove(buffer)
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
    logs.configure("json", "INFO", log_stream[-1])
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


def sample(metrics: callback_metrics.CallbackMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def post_full(port: int, body: bytes) -> tuple[int, dict[str, Any], str | None]:
    """POST a callback: status, JSON answer and its Retry-After header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/callbacks/{ACCOUNT}", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        conn.close()
