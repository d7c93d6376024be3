"""The CLI as a subprocess against the simulator (real HTTP) and a real Postgres database."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from prometheus_client import parser

from sync_worker import client, models, simulator, store
from sync_worker import status as status_tables

ACCOUNTS = ("0252012345-00001", "0252012345-00002", "0342077777-00001")
SECRETS = ("sim-client-secret", "sim-password")


def worker_env(sim: simulator.Simulator, db_url: str, **extra: str) -> dict[str, str]:
    # inherit: the parent's own settings must not leak into the subprocess.
    env = sim.worker_env(
        accounts=ACCOUNTS,
        database_url=db_url,
        inherit=True,
        SYNC_CONCURRENCY="3",
        SYNC_LOG_FORMAT="json",
        THINGSPACE_RETRY_MAX_WAIT="0.2",
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for value in SECRETS:
        assert value not in proc.stdout + proc.stderr, f"secret leaked by {args}"
    return proc


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    # Everything before the summary is a JSON log line; the summary is the last line.
    for line in lines[:-1]:
        json.loads(line)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def distinct_backlog(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct messages: exact duplicates in different blocks are one message by design (no id)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for message in simulator.seed_messages(n * 2, seed):
        key = json.dumps(message, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(message)
        if len(out) == n:
            break
    assert len(out) == n
    return out


def stored(db_url: str, account: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT raw_json FROM sms_history WHERE account_name = %s", (account,)).fetchall()
    return sorted(json.dumps(json.loads(r[0]), sort_keys=True) for r in rows)


def canonical(messages: list[Any]) -> list[str]:
    return sorted(json.dumps(m, sort_keys=True) for m in messages)


@pytest.mark.slow
def test_backlog_of_10000_over_3_accounts_lands_exactly_and_a_second_once_inserts_nothing(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """`once` stores exactly the delivered set of 3 accounts (10,000 messages); a rerun given 450 of
    them again inserts nothing."""
    sizes = (3334, 3333, 3333)
    for i, (account, n) in enumerate(zip(ACCOUNTS, sizes, strict=True)):
        simulator.inject(account, distinct_backlog(n, seed=i + 1))
    env = worker_env(simulator, db_url)

    first = cli(env, "once")
    assert first.returncode == 0, first.stderr
    result = summary(first)
    assert (result["received"], result["inserted"], result["exit_code"]) == (10_000, 10_000, 0)
    assert result["outcomes"] == {"succeeded": 3}
    for account, n in zip(ACCOUNTS, sizes, strict=True):
        delivered = simulator.acknowledged(account)
        assert len(delivered) == n
        assert simulator.queued(account) == []
        assert stored(db_url, account) == canonical(delivered)

    # Stored messages delivered again (the platform lost an acknowledgement): the rerun must really
    # go through the upsert, not just find empty queues.
    for account in ACCOUNTS:
        assert len(simulator.requeue(account, 150)) == 150
    second = cli(env, "once")
    assert second.returncode == 0, second.stderr
    again = summary(second)
    assert (again["received"], again["inserted"], again["replays"]) == (450, 0, 450), again
    assert all(simulator.queued(a) == [] for a in ACCOUNTS)
    assert sum(len(stored(db_url, a)) for a in ACCOUNTS) == 10_000

    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["account_name"]: r for r in json.loads(status.stdout.strip().splitlines()[-1])["accounts"]}
    assert set(rows) == set(ACCOUNTS)
    for account, n in zip(ACCOUNTS, sizes, strict=True):
        row = rows[account]
        assert row["row_count"] == n
        assert row["last_run_outcome"] == "succeeded"
        assert row["last_error"] is None
        assert row["cursor_present"] is False
        assert isinstance(row["last_success_at"], str)
        assert isinstance(row["lag_seconds"], (int, float))


def test_migrate_then_status_on_an_empty_database(
    simulator: simulator.Simulator, make_database: Callable[..., str]
) -> None:
    """`status` and `once` refuse an unmigrated database (exit 3, says migrate, nothing sent to the API);
    `migrate` fixes it, idempotently."""
    url = make_database(migrated=False)
    env = worker_env(simulator, url)

    before = cli(env, "status", "--json")
    assert before.returncode == 3
    assert "migrate" in before.stderr
    # `once` too, and before it logs in or asks the API anything.
    refused = cli(worker_env(simulator, url, SYNC_ACCOUNTS="0252012345-00001"), "once")
    assert refused.returncode == 3, refused.stderr
    assert "migrate" in refused.stderr
    assert simulator.stats.login_attempts == 0
    assert not simulator.stats.requests

    migrated = cli(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied: 0001" in migrated.stdout
    again = cli(env, "migrate")
    assert again.returncode == 0 and "up to date" in again.stdout

    after = cli(env, "status", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout.strip().splitlines()[-1]) == {"accounts": []}


def test_bad_configuration_exits_2_before_touching_anything(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """A bad account name exits 2 naming SYNC_ACCOUNTS, and no API request is made."""
    proc = cli(worker_env(simulator, db_url, SYNC_ACCOUNTS="0252012345-00001,../etc"), "once")
    assert proc.returncode == 2
    assert "SYNC_ACCOUNTS" in proc.stderr
    assert simulator.stats.token_requests == 0


def test_cursor_show_and_reset(simulator: simulator.Simulator, db_url: str) -> None:
    """`cursor show` prints the stored token; `cursor reset --yes` clears it and records why."""
    account = ACCOUNTS[0]
    page = models.HistoryPage(account, (), has_more_data=True, status=202, next="tok12345")
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_id = store.start_run(conn, account)
        store.commit_block(conn, run_id, page)
    env = worker_env(simulator, db_url)

    shown = cli(env, "cursor", "show", "--account", account, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.strip().splitlines()[-1]) == {account: "tok12345"}

    refused = subprocess.run(
        [sys.executable, "-m", "sync_worker", "cursor", "reset", "--account", account],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "--yes" in refused.stderr

    reset = cli(env, "cursor", "reset", "--account", account, "--yes")
    assert reset.returncode == 0, reset.stderr
    with psycopg.connect(db_url) as conn:
        assert store.get_cursor(conn, account) is None
        (reason,) = conn.execute(
            "SELECT cleared_reason FROM sync_cursor WHERE account_name = %s", (account,)
        ).fetchone() or (None,)
    assert reason is not None and "cursor reset" in reason

    shown = cli(env, "cursor", "show", "--account", account, "--json")
    assert json.loads(shown.stdout.strip().splitlines()[-1]) == {account: None}


def test_refused_password_exits_4(simulator: simulator.Simulator, db_url: str) -> None:
    """A wrong password makes `once` exit 4 (credentials refused), and `auth status` reports the count."""
    env = worker_env(simulator, db_url, THINGSPACE_PASSWORD="wrong-password-1", SYNC_ACCOUNTS=ACCOUNTS[0])
    proc = cli(env, "once")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "wrong-password-1" not in proc.stdout + proc.stderr
    status = cli(env, "auth", "status", "--json")
    assert status.returncode == 4  # logins are being refused
    assert json.loads(status.stdout.strip().splitlines()[-1])["failures"] == 1

    reset = cli(env, "auth", "reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    status = cli(env, "auth", "status", "--json")
    assert json.loads(status.stdout.strip().splitlines()[-1])["failures"] == 0
    assert simulator.stats.failed_logins == 1


def test_send_and_start_delivery(simulator: simulator.Simulator, db_url: str) -> None:
    """`send` posts the validated request once and prints the requestId; `start-delivery` reports success."""
    env = worker_env(simulator, db_url)
    sent = cli(
        env,
        "send",
        "--account",
        ACCOUNTS[0],
        "--device",
        "IMEI:0990000862471854",
        "--device",
        "msisdn:15551234567",
        "--message",
        "reboot $(now) & report",
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout.strip().splitlines()[-1])["requestId"]
    (body,) = simulator.sent
    assert body["accountName"] == ACCOUNTS[0]
    assert body["smsMessage"] == "reboot $(now) & report"
    assert body["deviceIds"] == [
        {"id": "0990000862471854", "kind": "imei"},
        {"id": "15551234567", "kind": "msisdn"},
    ]

    started = cli(env, "start-delivery", "--account", ACCOUNTS[0], "--yes")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout.strip().splitlines()[-1]) == {"account": ACCOUNTS[0], "success": True}
    assert simulator.stats.start_callbacks == 1


def test_simulate_serves_seeded_traffic_until_interrupted() -> None:
    """`simulate` prints a reachable base URL with seeded messages queued, and exits 0 on SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "simulate", "--port", "0", "--seed-messages", "150"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        base_url = lines[0].rsplit(" ", 1)[1].strip()
        assert base_url.startswith("http://127.0.0.1:")
        cfg = simulator.SimConfig()
        printed = "".join(lines)
        assert "THINGSPACE_BASE_URL=" + base_url in printed
        # Usable as printed: the simulator's public test credentials are not scrubbed.
        assert f"THINGSPACE_PASSWORD={cfg.password.reveal()}\n" in printed
        api = client.ThingSpaceClient(
            client.ClientConfig(
                base_url=base_url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                username=cfg.username,
                password=cfg.password,
                allow_insecure_loopback=True,
            )
        )
        try:
            page = api.sms.list_devices_sms_messages("0252012345-00001")
        finally:
            api.close()
        assert len(page.messages) == 100 and page.next is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_daemon(env: dict[str, str]) -> tuple[subprocess.Popen[str], EventReader]:
    """Start `sync-worker run` with its JSON log lines collected by an EventReader."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, EventReader(proc.stdout)


class EventReader:
    """Collects a subprocess's JSON log lines on a thread so a test can wait for named events."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, names: set[str], timeout: float = 60) -> None:
        missing = set(names)
        deadline = time.monotonic() + timeout
        while missing:
            line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            assert line is not None, f"process ended before {missing}: {self.lines}"
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                missing.discard(json.loads(line).get("event"))

    def rest(self) -> list[str]:
        self._thread.join(timeout=30)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return self.lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_run_serves_health_and_seeded_freshness_and_honours_the_shutdown_timeout(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """`run`: /healthz 200, freshness seeded from the database at start; SIGTERM with a run stuck past
    the shutdown timeout exits 1 at once, the timeout event flushed to stdout."""
    synced, never = ACCOUNTS[0], ACCOUNTS[1]
    simulator.inject(synced, distinct_backlog(30, seed=5))
    assert cli(worker_env(simulator, db_url, SYNC_ACCOUNTS=synced), "once").returncode == 0
    with psycopg.connect(db_url) as conn:
        (last_success,) = [
            s.last_success_at for s in status_tables.account_status(conn) if s.account_name == synced
        ]
    assert last_success is not None

    # Every account's first history request hangs far longer than the shutdown timeout and than the
    # proc.wait below: a daemon that joined the stuck thread could not pass it.
    simulator.faults.timeout_seconds = 600.0
    simulator.faults.script("history", ["timeout", "timeout"])
    port = free_port()
    env = worker_env(
        simulator,
        db_url,
        SYNC_ACCOUNTS=f"{synced},{never}",
        SYNC_METRICS_PORT=str(port),
        SYNC_SHUTDOWN_TIMEOUT_SECONDS="0.5",
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_JITTER_SECONDS="0",
    )
    proc, events = start_daemon(env)
    try:
        # A session login happens inside an account job: from here on a run is in flight.
        events.wait_for({"daemon_started", "thingspace_session_started"})
        base = f"http://127.0.0.1:{port}"
        assert http_get(base + "/healthz")[0] == 200
        status, text = http_get(base + "/metrics")
        assert status == 200
        parsed = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text)
            for s in family.samples
        }
        stored_at = parsed[("thingspace_sync_last_success_timestamp_seconds", (("account", synced),))]
        assert stored_at == pytest.approx(last_success.timestamp(), abs=0.01)
        assert ("thingspace_sync_seconds_since_last_success", (("account", never),)) in parsed
        assert ("thingspace_sync_seconds_since_last_success", (("account", synced),)) in parsed
        assert parsed[("thingspace_sync_login_guard_tripped", ())] == 0

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Without os._exit the interpreter would join the stuck run's thread (a 600 s hold).
    assert code == 1
    lines = events.rest()
    assert any(json.loads(line).get("event") == "daemon_shutdown_timeout" for line in lines)
    assert proc.stderr is not None
    output = "".join(lines) + proc.stderr.read()
    for value in SECRETS:
        assert value not in output
