"""The metrics/health server in front of a real daemon: simulator over HTTP + real Postgres."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import parser
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sync_worker import app, config, health, metrics, migrations, probes
from sync_worker import simulator as sim_mod

ACCOUNT = "0252012345-00001"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def stored_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM sms_history WHERE account_name = %s", (ACCOUNT,)).fetchone()
    assert row is not None
    return int(row[0])


def settings_for(sim: sim_mod.Simulator, database_url: str, **extra: str) -> config.Settings:
    env = sim.worker_env(
        accounts=[ACCOUNT],
        database_url=database_url,
        # Only the immediate first run happens during the test.
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_JITTER_SECONDS="0",
        SYNC_LOG_FORMAT="json",
    )
    env.update(extra)
    return config.load(env)


def database_check(settings: config.Settings) -> Callable[[], None]:
    def check() -> None:
        with app.connector(settings, connect_timeout=3)() as conn:
            migrations.check_schema(conn)

    return check


class RunSignal(metrics.Metrics):
    """Metrics that also report, through an event, when an account run finished."""

    def __init__(self) -> None:
        super().__init__()
        self.finished = threading.Event()

    def run_finished(self, account: str, outcome: str, finished_at: float, succeeded: bool) -> None:
        super().run_finished(account, outcome, finished_at, succeeded)
        self.finished.set()


class TcpProxy:
    """A loopback TCP forwarder that can be cut and restored on the same port (a database outage)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the blocked accept(); close() alone may not on Linux.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            return upstream
        return socket.create_connection(self.target, timeout=5)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def db_proxy(db_url: str) -> Iterator[tuple[TcpProxy, str]]:

    info = conninfo_to_dict(db_url)
    host = str(info.get("host") or "127.0.0.1")
    port = int(info.get("port") or 5432)
    # The embedded server listens on a Unix socket only; the proxy bridges TCP to it.
    target: tuple[str, int] | str = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    proxy = TcpProxy(target)
    proxy.up()
    try:
        yield proxy, make_conninfo(db_url, host="127.0.0.1", port=str(proxy.port))
    finally:
        proxy.down()


@pytest.fixture
def running_daemon(
    simulator: sim_mod.Simulator, db_url: str
) -> Iterator[tuple[RunSignal, health.HealthServer, list[dict[str, Any]]]]:
    seeded = simulator.seed(ACCOUNT, 250, seed=7)
    settings = settings_for(simulator, db_url)
    m = RunSignal()
    liveness = probes.Liveness()
    server = health.HealthServer(
        0,
        m,
        live=liveness,
        ready=health.checks([("database", database_check(settings))]),
        host="127.0.0.1",
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            app.run_daemon(
                settings, stop_event=stop, metrics=m, install_signal_handlers=False, liveness=liveness
            )
        ),
        daemon=True,
    )
    server.start()
    thread.start()
    try:
        yield m, server, seeded
    finally:
        stop.set()
        thread.join(timeout=60)
        server.stop()
    assert not thread.is_alive()
    assert result == [0]


def test_metrics_of_a_running_daemon_match_the_sync(
    running_daemon: tuple[RunSignal, health.HealthServer, list[dict[str, Any]]],
    simulator: sim_mod.Simulator,
    db_url: str,
) -> None:
    """After the daemon's first run, /metrics reports exactly the messages, blocks and runs of that sync."""
    m, server, seeded = running_daemon
    assert m.finished.wait(60), "the daemon never finished its first run"
    base = f"http://127.0.0.1:{server.port}"

    status, body = get(base + "/metrics")
    assert status == 200
    parsed = samples(body.decode())
    assert sample(parsed, "thingspace_sync_messages_received_total", account=ACCOUNT) == len(seeded) == 250
    inserted = sample(parsed, "thingspace_sync_messages_inserted_total", account=ACCOUNT)
    replayed = sample(parsed, "thingspace_sync_messages_replayed_total", account=ACCOUNT)
    # The seed holds a few exact duplicates: they count as replays, not new rows.
    assert inserted == stored_rows(db_url) > 0
    assert inserted + (replayed or 0) == 250
    assert sample(parsed, "thingspace_sync_blocks_total", account=ACCOUNT) == 3
    assert sample(parsed, "thingspace_sync_runs_total", account=ACCOUNT, outcome="succeeded") == 1
    assert (sample(parsed, "thingspace_sync_last_success_timestamp_seconds", account=ACCOUNT) or 0) > 0
    freshness = sample(parsed, "thingspace_sync_seconds_since_last_success", account=ACCOUNT)
    assert freshness is not None
    assert 0 <= freshness < 60
    assert sample(parsed, "thingspace_sync_login_guard_tripped") == 0
    history_requests = sum(
        value
        for (name, labels), value in parsed.items()
        if name == "thingspace_sync_api_request_duration_seconds_count"
        and dict(labels).get("operation", "").startswith("list_devices_sms_messages")
    )
    assert history_requests >= 3
    assert len(simulator.acknowledged(ACCOUNT)) == 250

    assert get(base + "/healthz")[0] == 200
    status, body = get(base + "/readyz")
    assert (status, json.loads(body)["status"]) == (200, "ready")


def test_readyz_follows_the_database_going_away_and_returning(
    simulator: sim_mod.Simulator, db_proxy: tuple[TcpProxy, str]
) -> None:
    """/readyz is 200, turns 503 naming the database while Postgres is unreachable, 200 once it is back."""
    proxy, url = db_proxy
    settings = settings_for(simulator, url)
    alive = threading.Event()
    alive.set()
    server = health.HealthServer(
        0,
        metrics.Metrics(),
        live=alive.is_set,
        ready=health.checks([("database", database_check(settings))]),
        host="127.0.0.1",
    )
    with server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(base + "/readyz")[0] == 200

        proxy.down()
        status, body = get(base + "/readyz")
        assert status == 503
        reason = json.loads(body)["reason"]
        assert reason.startswith("database:")
        # Liveness must not follow the database: a restart would not bring it back.
        assert get(base + "/healthz")[0] == 200

        proxy.up()
        status, body = get(base + "/readyz")
        assert (status, json.loads(body)["status"]) == (200, "ready")


def test_readyz_reports_an_outdated_schema(
    simulator: sim_mod.Simulator, make_database: Callable[..., str]
) -> None:
    """Against an unmigrated database /readyz is 503 and tells the operator to run migrate."""
    settings = settings_for(simulator, make_database(migrated=False))
    server = health.HealthServer(
        0,
        metrics.Metrics(),
        live=lambda: True,
        ready=health.checks([("database", database_check(settings))]),
        host="127.0.0.1",
    )
    with server:
        status, body = get(f"http://127.0.0.1:{server.port}/readyz")
    assert status == 503
    assert "migrate" in json.loads(body)["reason"]


def test_healthz_is_the_scheduler_running(simulator: sim_mod.Simulator, db_url: str) -> None:
    """/healthz is 503 before the daemon's scheduler starts, 200 while it runs, 503 once it shut down."""
    simulator.seed(ACCOUNT, 20, seed=9)
    settings = settings_for(simulator, db_url)
    m = RunSignal()
    liveness = probes.Liveness()
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            app.run_daemon(
                settings, stop_event=stop, metrics=m, install_signal_handlers=False, liveness=liveness
            )
        ),
        daemon=True,
    )
    server = health.HealthServer(
        0, m, live=liveness, ready=health.checks([("database", database_check(settings))]), host="127.0.0.1"
    )
    with server:
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(base + "/healthz")
        assert (status, json.loads(body)["reason"]) == (503, "scheduler not running")
        thread.start()
        try:
            # A run only finishes once the scheduler started it.
            assert m.finished.wait(60)
            assert get(base + "/healthz")[0] == 200
        finally:
            stop.set()
            thread.join(timeout=60)
        assert result == [0]
        assert get(base + "/healthz")[0] == 503
