"""Unit tests of sync_worker.health over a real loopback socket."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from sync_worker import errors, health, metrics, secret
from tests.reliability import crash


class Flags:
    def __init__(self) -> None:
        self.live = True
        self.ready: tuple[bool, str] = (True, "ok")
        self.ready_error: Exception | None = None

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> tuple[bool, str]:
        if self.ready_error is not None:
            raise self.ready_error
        return self.ready


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(flags: Flags) -> Iterator[tuple[health.HealthServer, metrics.Metrics]]:
    m = metrics.Metrics()
    srv = health.HealthServer(0, m, live=flags.is_live, ready=flags.is_ready, host="127.0.0.1")
    srv.start()
    try:
        yield srv, m
    finally:
        srv.stop()


def base(srv: health.HealthServer) -> str:
    return f"http://127.0.0.1:{srv.port}"


def test_healthz_follows_live_callable(
    server: tuple[health.HealthServer, metrics.Metrics], flags: Flags
) -> None:
    """/healthz is 200 while live() is true and 503 with a JSON reason once it turns false."""
    srv, _ = server
    status, ctype, body = get(base(srv) + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert ctype == "application/json"
    flags.live = False
    status, _, body = get(base(srv) + "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"
    flags.live = True
    assert get(base(srv) + "/healthz")[0] == 200


def test_readyz_transitions_with_reason(
    server: tuple[health.HealthServer, metrics.Metrics], flags: Flags
) -> None:
    """/readyz goes 200 -> 503 (carrying the reason) -> 200 as ready() changes."""
    srv, _ = server
    assert get(base(srv) + "/readyz")[0] == 200
    flags.ready = (False, "database: unreachable")
    status, _, body = get(base(srv) + "/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "unready", "reason": "database: unreachable"}
    flags.ready = (True, "ok")
    status, _, body = get(base(srv) + "/readyz")
    assert (status, json.loads(body)["status"]) == (200, "ready")


def test_raising_probe_is_503_not_a_crash(
    server: tuple[health.HealthServer, metrics.Metrics], flags: Flags
) -> None:
    """A ready() that raises answers 503; a foreign exception reports only its type."""
    srv, _ = server
    flags.ready_error = RuntimeError("postgresql://user:hunter2@db/x")
    status, _, body = get(base(srv) + "/readyz")
    assert status == 503
    assert json.loads(body)["reason"] == "RuntimeError"
    assert b"hunter2" not in body
    flags.ready_error = errors.SchemaError("schema outdated: run `sync-worker migrate`")
    status, _, body = get(base(srv) + "/readyz")
    assert status == 503
    assert "migrate" in json.loads(body)["reason"]


def test_reasons_are_scrubbed_of_secrets(
    server: tuple[health.HealthServer, metrics.Metrics], flags: Flags
) -> None:
    """A registered secret inside a readiness reason never reaches the response body."""
    srv, _ = server
    pw = secret.Secret("s3cr3t-password-value")
    flags.ready = (False, f"login refused for {pw.reveal()}")
    status, _, body = get(base(srv) + "/readyz")
    assert status == 503
    assert b"s3cr3t-password-value" not in body


def test_metrics_endpoint_serves_registry(server: tuple[health.HealthServer, metrics.Metrics]) -> None:
    """/metrics returns the Prometheus text of the server's Metrics, including fresh counts."""
    srv, m = server
    m.block_committed("acct-1", received=7, inserted=6, replays=1, malformed=0)
    status, ctype, body = get(base(srv) + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert 'thingspace_sync_messages_inserted_total{account="acct-1"} 6.0' in body.decode()


def test_unknown_path_is_404(server: tuple[health.HealthServer, metrics.Metrics]) -> None:
    """Paths other than the three endpoints answer 404."""
    srv, _ = server
    assert get(base(srv) + "/nope")[0] == 404


def test_stop_releases_port_and_is_idempotent(flags: Flags) -> None:
    """After stop() the port accepts no connections, and stopping twice is harmless."""
    srv = health.HealthServer(
        0, metrics.Metrics(), live=flags.is_live, ready=flags.is_ready, host="127.0.0.1"
    )
    srv.start()
    port = srv.port
    assert port != 0
    srv.stop()
    srv.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_port_in_use_is_config_error(flags: Flags) -> None:
    """Binding a port that is taken raises errors.ConfigError naming SYNC_METRICS_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = health.HealthServer(
            port, metrics.Metrics(), live=flags.is_live, ready=flags.is_ready, host="127.0.0.1"
        )
        with pytest.raises(errors.ConfigError, match="SYNC_METRICS_PORT"):
            srv.start()


def test_checks_reports_first_failure() -> None:
    """health.checks runs named checks in order and reports the first failing one by name."""
    calls: list[str] = []

    def ok() -> None:
        calls.append("ok")

    def db_down() -> None:
        calls.append("db")
        raise errors.DatabaseUnavailableError("connection refused")

    def never() -> None:
        calls.append("never")

    assert health.checks([("a", ok)])() == (True, "ok")
    result = health.checks([("a", ok), ("database", db_down), ("c", never)])()
    assert result == (False, "database: connection refused")
    assert calls == ["ok", "ok", "db"]


def _idle_connection(srv: health.HealthServer) -> socket.socket:
    """A client that connects and never sends its request."""
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5)


def _closed_by_server(conn: socket.socket) -> bool:
    """True when the server closed ``conn`` (end of file or reset) within the client's 5 s timeout."""
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.timing
def test_an_idle_connection_is_closed_after_the_request_timeout(flags: Flags) -> None:
    """A client that connects and sends nothing is disconnected once the request timeout passes."""
    srv = health.HealthServer(
        0, metrics.Metrics(), live=flags.is_live, ready=flags.is_ready, host="127.0.0.1", request_timeout=0.5
    )
    with srv:
        with _idle_connection(srv) as idle:
            started = time.monotonic()
            assert _closed_by_server(idle)
            assert time.monotonic() - started >= 0.4  # the timeout closed it, not something at once
        crash.wait_until(lambda: srv.open_connections == 0, timeout=5, what="the handler to end")
        assert get(base(srv) + "/healthz")[0] == 200


@pytest.mark.timing
def test_idle_connections_beyond_the_cap_make_room_and_probes_still_answer(flags: Flags) -> None:
    """With the cap of idle connections reached, each new one closes the oldest idle one at once (long
    before the request timeout), the server holds no more than the cap, and /healthz still answers."""
    cap, extra = 4, 6
    srv = health.HealthServer(
        0,
        metrics.Metrics(),
        live=flags.is_live,
        ready=flags.is_ready,
        host="127.0.0.1",
        request_timeout=60.0,
        max_connections=cap,
    )
    threads_before = threading.active_count()
    with srv, contextlib.ExitStack() as stack:
        clients = []
        for held in [*range(1, cap + 1), *[cap] * extra]:
            clients.append(stack.enter_context(_idle_connection(srv)))

            def accepted(n: int = held) -> bool:
                return srv.open_connections == n

            crash.wait_until(accepted, timeout=5, what="the accept")
        started = time.monotonic()
        assert all(_closed_by_server(c) for c in clients[:extra])
        assert time.monotonic() - started < 5
        assert srv.open_connections == cap
        # Server thread plus one per held connection, whatever the number of clients that came (the
        # threads of the closed ones end just after their connection is dropped).
        crash.wait_until(
            lambda: threading.active_count() - threads_before == cap + 1, timeout=5, what="cap + 1 threads"
        )
        status, _, body = get(base(srv) + "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.timing
def test_a_connection_beyond_the_cap_of_busy_ones_is_closed_at_once(flags: Flags) -> None:
    """When every connection is busy answering, a newcomer is closed at once; the busy ones still get
    their answers."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_ready() -> tuple[bool, str]:
        entered.release()
        release.wait(10)
        return True, "ok"

    srv = health.HealthServer(
        0, metrics.Metrics(), live=flags.is_live, ready=slow_ready, host="127.0.0.1", max_connections=2
    )
    answers: list[int] = []
    with srv:
        busy = [
            threading.Thread(target=lambda: answers.append(get(base(srv) + "/readyz")[0])) for _ in range(2)
        ]
        for thread in busy:
            thread.start()
        for _ in busy:
            assert entered.acquire(timeout=5)
        with _idle_connection(srv) as newcomer:
            started = time.monotonic()
            assert _closed_by_server(newcomer)
            assert time.monotonic() - started < 5
        release.set()
        for thread in busy:
            thread.join(timeout=10)
    assert answers == [200, 200]
