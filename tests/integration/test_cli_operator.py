"""Operator-facing CLI behaviour (issue 15): data alone on stdout, audit events, `status --check`,
unknown accounts refused, `accounts list/forget`, confirmations; subprocesses against the simulator
and a real Postgres."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import parser

from sync_worker import db, exitcodes, models, outcomes, simulator, store, sync
from tests.integration.test_cli_e2e import ACCOUNTS, cli, worker_env
from tests.integration.test_sync import backlog, canonical, make_client, stored_raw

STRANGER = "0999999999-00001"


def _events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line must be one JSON log object (SYNC_LOG_FORMAT=json)."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def _env(sim: simulator.Simulator, db_url: str, **extra: str) -> dict[str, str]:
    for account in ACCOUNTS:
        if account not in sim.accounts():
            sim.add_account(account)
    return worker_env(sim, db_url, **extra)


def _no_stdin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _seed_stranger(db_url: str) -> None:
    """An account the configuration does not name, with a run, a cursor and one stored message."""
    wire = {
        "deviceIds": [{"id": "0123456789", "kind": "imei"}],
        "message": "hello",
        "timestamp": "2024-03-01T12:00:00-05:00",
    }
    page = models.HistoryPage(STRANGER, (models.SMSMessage.from_wire(wire),), True, 202, "tok99999")
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_id = store.start_run(conn, STRANGER)
        store.commit_block(conn, run_id, page)
        store.finish_run(conn, run_id, "succeeded", None)


def test_data_commands_print_only_their_data_on_stdout(simulator: simulator.Simulator, db_url: str) -> None:
    """once/status/cursor/accounts/auth/send: stdout parses whole as the data; every log line is on stderr."""
    simulator.seed(ACCOUNTS[0], 250, seed=3)
    env = _env(simulator, db_url)

    once = cli(env, "once")
    assert once.returncode == 0, once.stderr
    assert len(once.stdout.splitlines()) == 1
    assert json.loads(once.stdout)["inserted"] == 250
    assert any(e["event"] == "sync_pass" for e in _events(once.stderr))

    for args in (
        ("status", "--json"),
        ("cursor", "show", "--json"),
        ("cursor", "show", "--account", ACCOUNTS[0], "--json"),
        ("accounts", "list", "--json"),
        ("auth", "status", "--json"),
    ):
        proc = cli(env, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)  # nothing but the data
        _events(proc.stderr)

    reset = cli(env, "cursor", "reset", "--account", ACCOUNTS[0], "--yes")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.splitlines() == [
        f"{ACCOUNTS[0]}: cursor cleared; the next sync starts at the head of the queue"
    ]
    said, *logged = reset.stderr.splitlines()
    assert said.startswith("cursor reset forgets the stored cursor")  # what it does, before doing it
    assert [json.loads(line)["event"] for line in logged] == ["cursor_reset"]

    text = "secret text PIN 4711"
    sent = cli(env, "send", "--account", ACCOUNTS[1], "--device", "imei:0123456789",
               "--device", "msisdn:15551234567", "--message", text)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    request_id = json.loads(sent.stdout)["requestId"]
    assert request_id
    (audit,) = [e for e in _events(sent.stderr) if e.get("event") == "sms_sent"]
    assert (audit["request_id"], audit["account"], audit["devices"]) == (request_id, ACCOUNTS[1], 2)
    assert audit["audit"] is True
    assert text not in sent.stderr and "4711" not in sent.stderr


def test_seven_bit_send_outside_the_gsm_alphabet_is_refused_before_any_request(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """`send --message 温度` (7-bit default) exits 2 naming the alphabet; nothing reaches the API."""
    proc = cli(_env(simulator, db_url), "send", "--account", ACCOUNTS[0], "--device", "imei:0123456789",
               "--message", "温度")  # fmt: skip
    assert proc.returncode == 2
    assert "GSM 7-bit alphabet" in proc.stderr
    assert simulator.sent == [] and simulator.stats.token_requests == 0


def test_status_check_exits_6_naming_each_problem(simulator: simulator.Simulator, db_url: str) -> None:
    """`status --check`: 0 when all is well; 6 for a stale, failing or guard-tripped account, with the
    full last error in --json."""
    env = _env(simulator, db_url, SYNC_ACCOUNTS=",".join(ACCOUNTS[:2]))
    assert cli(env, "once").returncode == 0

    ok = cli(env, "status", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK:")

    stale = cli(env, "status", "--check", "--stale-after", "0")
    assert stale.returncode == 6
    assert stale.stdout.splitlines()[0] == "UNHEALTHY: 2 problem(s)"
    assert f"{ACCOUNTS[0]}: stale" in stale.stdout

    long_error = "upstream said: " + "x" * 900
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_id = store.start_run(conn, ACCOUNTS[1])
        store.finish_run(conn, run_id, "failed", long_error)
    failing = cli(env, "status", "--check", "--json")
    assert failing.returncode == 6
    shown = json.loads(failing.stdout)
    assert shown["healthy"] is False
    assert [(p["account"], p["problem"]) for p in shown["problems"]] == [(ACCOUNTS[1], "failing")]
    row = next(r for r in shown["accounts"] if r["account_name"] == ACCOUNTS[1])
    assert row["last_error"] == long_error  # the full text, not the table's cut

    # A configured account never synced is stale; a refused login is a guard problem.
    bad = _env(simulator, db_url, SYNC_ACCOUNTS=",".join(ACCOUNTS), THINGSPACE_PASSWORD="wrong-pw-1")
    assert cli(bad, "once", "--account", ACCOUNTS[0]).returncode == 4
    tripped = cli(bad, "status", "--check")
    assert tripped.returncode == 6
    assert f"{ACCOUNTS[2]}: stale: never synced" in tripped.stdout
    assert "(all accounts): login_guard:" in tripped.stdout


def test_unknown_accounts_are_refused_and_forget_removes_state(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """cursor reset/show refuse an unknown or invalid account (no row created); accounts list shows
    configured and known accounts; accounts forget removes state, keeping history unless asked."""
    env = _env(simulator, db_url)
    refused = cli(env, "cursor", "reset", "--account", "nosuch", "--yes")
    assert refused.returncode == 2 and "neither configured" in refused.stderr
    assert cli(env, "cursor", "show", "--account", "x").returncode == 2
    assert cli(env, "cursor", "show", "--account", "nosuch").returncode == 2
    status = json.loads(cli(env, "status", "--json").stdout)
    assert status == {"accounts": []}

    _seed_stranger(db_url)

    listed = {
        a["account_name"]: a for a in json.loads(cli(env, "accounts", "list", "--json").stdout)["accounts"]
    }
    assert set(listed) == {*ACCOUNTS, STRANGER}
    assert listed[STRANGER]["configured"] is False and listed[STRANGER]["in_database"] is True
    assert listed[ACCOUNTS[0]]["configured"] is True and listed[ACCOUNTS[0]]["in_database"] is False
    assert cli(env, "cursor", "show", "--account", STRANGER).returncode == 0

    configured = cli(env, "accounts", "forget", "--account", ACCOUNTS[0], "--yes")
    assert configured.returncode == 2 and "still configured" in configured.stderr
    unasked = _no_stdin(env, "accounts", "forget", "--account", STRANGER)
    assert unasked.returncode == 2 and "--yes" in unasked.stderr

    forgot = cli(env, "accounts", "forget", "--account", STRANGER, "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["runs"] == 1 and json.loads(forgot.stdout)["history"] == 0
    assert "kept" in forgot.stderr
    with psycopg.connect(db_url) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM sms_history WHERE account_name = %s", (STRANGER,)
        ).fetchone()
    assert kept == (1,)
    assert json.loads(cli(env, "status", "--json").stdout) == {"accounts": []}

    assert cli(env, "accounts", "forget", "--account", STRANGER, "--yes").returncode == 2  # unknown now


class _ParkAtSecondBlock:
    """Wraps the client: the run parks once its second block is in hand (the first committed and
    acknowledged, the account lock held) until ``release``; ``parked`` is set then."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.parked = threading.Event()
        self.release = threading.Event()
        self.sms = self

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        for i, page in enumerate(self._api.sms.iter_history_blocks(account_name, next, deadline=deadline)):
            if i == 1:
                self.parked.set()
                assert self.release.wait(timeout=60)
            yield page


def test_cursor_reset_and_forget_are_refused_while_a_run_holds_the_account_lock(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """`cursor reset` (and `accounts forget`) while a drain holds the account's lock: refused with
    exit 2 and the cursor unchanged (df24dcc cleared it and the drain wrote its token back); after
    the run, the reset goes through."""
    env = _env(simulator, db_url)
    account = ACCOUNTS[0]
    backlog(simulator, account, 250, seed=11)
    api = make_client(simulator)
    parking = _ParkAtSecondBlock(api)
    results: list[outcomes.AccountResult] = []
    run = threading.Thread(
        target=lambda: results.append(
            sync.sync_account(parking, account, store.PostgresStore(db.connector(db_url)))
        )
    )
    run.start()
    try:
        assert parking.parked.wait(timeout=60)
        with psycopg.connect(db_url, autocommit=True) as conn:
            held = store.get_cursor(conn, account)
            assert held is not None  # the first block's token, committed before its acknowledgement
            reset = cli(env, "cursor", "reset", "--account", account, "--yes")
            assert reset.returncode == exitcodes.CONFIG, reset.stderr
            assert "being synced right now" in reset.stderr
            assert store.get_cursor(conn, account) == held
            forgot = cli(env, "accounts", "forget", "--account", account, "--even-if-configured", "--yes")
            assert forgot.returncode == exitcodes.CONFIG and "being synced right now" in forgot.stderr
            assert store.get_cursor(conn, account) == held
    finally:
        parking.release.set()
        run.join(timeout=60)
        api.close()
    assert [r.outcome for r in results] == ["succeeded"]
    reset = cli(env, "cursor", "reset", "--account", account, "--yes")
    assert reset.returncode == exitcodes.OK, reset.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert store.get_cursor(conn, account) is None
        assert stored_raw(conn, account) == canonical(simulator.acknowledged(account))
    assert simulator.queued(account) == []


def test_forget_with_history_deletes_the_messages(simulator: simulator.Simulator, db_url: str) -> None:
    """--with-history also deletes the account's sms_history (and device) rows; other accounts untouched."""
    simulator.seed(ACCOUNTS[0], 30, seed=5)
    env = _env(simulator, db_url, SYNC_ACCOUNTS=ACCOUNTS[0])
    assert cli(env, "once").returncode == 0
    other = _env(simulator, db_url, SYNC_ACCOUNTS=ACCOUNTS[1])
    forgot = cli(other, "accounts", "forget", "--account", ACCOUNTS[0], "--with-history", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["history"] == 30
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM sms_history").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sms_by_device").fetchone() == (0,)


def test_start_delivery_asks_first(simulator: simulator.Simulator, db_url: str) -> None:
    """start-delivery without --yes off a terminal exits 2 and sends nothing; it says what it does."""
    proc = _no_stdin(_env(simulator, db_url), "start-delivery", "--account", ACCOUNTS[0])
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert simulator.stats.start_callbacks == 0 and simulator.stats.token_requests == 0
    done = cli(_env(simulator, db_url), "start-delivery", "--account", ACCOUNTS[0], "--yes")
    assert done.returncode == 0
    assert "callback" in done.stderr and json.loads(done.stdout)["success"] is True


class _Pushgateway(http.server.ThreadingHTTPServer):
    """Records what a Pushgateway would receive: (method, path, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                gateway.received.append(("PUT", self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_once_writes_the_textfile_and_pushes_to_the_pushgateway(
    simulator: simulator.Simulator, db_url: str, tmp_path: Path
) -> None:
    """With SYNC_METRICS_TEXTFILE and SYNC_METRICS_PUSHGATEWAY, a pass leaves a parseable .prom file
    (nothing else in its directory) and PUTs the same metrics to job thingspace-sms-sync-once."""
    simulator.seed(ACCOUNTS[0], 120, seed=9)
    gateway = _Pushgateway()
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        textfile = tmp_path / "thingspace-sms-sync.prom"
        env = _env(
            simulator,
            db_url,
            SYNC_ACCOUNTS=ACCOUNTS[0],
            SYNC_METRICS_TEXTFILE=str(textfile),
            SYNC_METRICS_PUSHGATEWAY=f"http://127.0.0.1:{gateway.server_address[1]}",
        )
        once = cli(env, "once")
        assert once.returncode == 0, once.stderr
    finally:
        gateway.shutdown()
        gateway.server_close()
        thread.join(timeout=5)
    assert [p.name for p in tmp_path.iterdir()] == [textfile.name]
    written = {
        s.name: s for f in parser.text_string_to_metric_families(textfile.read_text()) for s in f.samples
    }
    assert written["thingspace_sync_messages_inserted_total"].value == 120
    assert "thingspace_sync_last_success_timestamp_seconds" in written
    assert not any(name.startswith("process_") or name.endswith("_created") for name in written)
    ((method, path, body),) = gateway.received
    assert method == "PUT"
    assert path == f"/metrics/job/thingspace-sms-sync-once/instance/{socket.gethostname()}"
    pushed = {s.name for f in parser.text_string_to_metric_families(body) for s in f.samples}
    assert pushed == set(written)


def test_once_refuses_an_account_neither_configured_nor_known(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """With accounts configured, `once --account` with a mistyped name is a usage error (exit 2) before
    any login, and leaves no row for `status` to show; an account only the database knows is synced, and
    without a configuration the names given are the list."""
    simulator.add_account(STRANGER)
    simulator.seed(STRANGER, 30, seed=5)
    unconfigured = _env(simulator, db_url)
    del unconfigured["SYNC_ACCOUNTS"]
    first = cli(unconfigured, "once", "--account", STRANGER)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["inserted"] == 30

    configured = _env(simulator, db_url, SYNC_ACCOUNTS=ACCOUNTS[0])
    known = cli(configured, "once", "--account", STRANGER)
    assert known.returncode == 0, known.stderr

    logins = simulator.stats.login_attempts
    typo = "0252012345-0001"
    refused = cli(configured, "once", "--account", typo)
    assert refused.returncode == exitcodes.CONFIG
    assert refused.stdout == ""
    assert refused.stderr.splitlines()[-1].startswith(
        f"sync-worker: error: --account: account {typo} is neither configured (SYNC_ACCOUNTS / --config) "
        "nor known to the database"
    )
    assert simulator.stats.login_attempts == logins
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT (SELECT count(*) FROM sync_run WHERE account_name = %(a)s)"
            " + (SELECT count(*) FROM sync_cursor WHERE account_name = %(a)s)",
            {"a": typo},
        ).fetchone()
    assert rows == (0,)
