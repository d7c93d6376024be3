"""Security end to end: TLS verification cannot be switched off by accident, and no credential reaches
any output (errors, repr, metrics, `status`, CLI stderr) or the database as SQL."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
import requests

from sync_worker import app, client, config, errors, metrics, models, secret, store
from tests.reliability import crash, logbook

ACCOUNT = "0252012345-00041"
ACCOUNTS = (ACCOUNT,)


# --- TLS ------------------------------------------------------------------------------------


class _Counting(http.server.BaseHTTPRequestHandler):
    requests_seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).requests_seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        body = b'{"access_token":"tls-should-never-get-here","expires_in":3600,"token_type":"bearer"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def self_signed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (what a MITM would present)."""
    d: Path = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def _cfg(base_url: str, **kw: object) -> client.ClientConfig:
    return client.ClientConfig(
        base_url=base_url,
        client_id="tls-client",
        client_secret=secret.Secret("tls-Client-Secret-1"),
        username="tls-user",
        password=secret.Secret("tls-Password-1"),
        timeout=(2.0, 2.0),
        **kw,  # type: ignore[arg-type]
    )


def _try_history(cfg: client.ClientConfig) -> errors.SyncWorkerError:
    api = client.ThingSpaceClient(cfg)
    try:
        with pytest.raises(errors.SyncWorkerError) as exc_info:
            api.sms.list_devices_sms_messages(ACCOUNT)
    finally:
        api.close()
    return exc_info.value


def test_tls_verification_is_on_by_default(self_signed_server: str) -> None:
    """A server with an untrusted certificate is refused before any credential is sent to it."""
    _Counting.requests_seen.clear()
    error = _try_history(_cfg(self_signed_server))
    assert _Counting.requests_seen == []
    for value in ("tls-Client-Secret-1", "tls-Password-1"):
        assert value not in str(error) and value not in repr(error)


def test_a_session_with_verify_false_does_not_turn_verification_off(self_signed_server: str) -> None:
    """Passing a requests.Session whose verify is False still verifies certificates (no silent opt-out)."""
    session = requests.Session()
    session.verify = False
    _Counting.requests_seen.clear()
    _try_history(_cfg(self_signed_server, session=session))
    assert _Counting.requests_seen == []


def test_insecure_switch_does_not_disable_tls_verification(self_signed_server: str) -> None:
    """allow_insecure_loopback only permits plain http to loopback; https is still verified."""
    _Counting.requests_seen.clear()
    _try_history(_cfg(self_signed_server, allow_insecure_loopback=True))
    assert _Counting.requests_seen == []


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("http://127.0.0.1:9/api", False),
        ("http://thingspace.verizon.com/api", True),
        ("http://10.1.2.3/api", True),
        ("http://localhost.evil.example/api", True),
    ],
)
def test_plain_http_is_refused_without_the_loopback_switch(url: str, insecure: bool) -> None:
    """The client itself refuses http unless the switch is on and the host is loopback (defence in depth)."""
    with pytest.raises(errors.SyncWorkerError):
        client.ThingSpaceClient(_cfg(url, allow_insecure_loopback=insecure))


# --- no secret in repr / errors / metrics / status ---------------------------------------


def _sim() -> crash.HookedSimulator:
    return crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )


def _credentials(sim: crash.HookedSimulator) -> list[str]:
    return [sim.config.client_secret.reveal(), sim.config.password.reveal()]


def test_repr_of_config_and_client_hide_credentials() -> None:
    """repr/str of ClientConfig and ThingSpaceClient never contain the secret or the password."""
    cfg = _cfg("https://thingspace.verizon.com/api")
    api = client.ThingSpaceClient(cfg)
    try:
        shown = repr(cfg) + str(cfg) + repr(api) + str(api) + repr(vars(api))
    finally:
        api.close()
    assert "tls-Client-Secret-1" not in shown
    assert "tls-Password-1" not in shown


def test_refused_login_error_carries_no_credential(db_url: str) -> None:
    """A wrong password ends in an auth error whose text, repr and cause chain hold no credential."""
    sim = _sim()
    with sim:
        env = crash.worker_env(sim, db_url, ACCOUNTS)
        wrong = "Wrong-Pw-'\";$(x)-" + os.urandom(4).hex()
        secret.register(wrong)
        settings_env = {**env, "THINGSPACE_PASSWORD": wrong}

        settings = config.load(settings_env)
        api = client.ThingSpaceClient(app.client_config(settings))
        try:
            with pytest.raises(errors.AuthError) as exc_info:
                api.sms.list_devices_sms_messages(ACCOUNT)
        finally:
            api.close()
        assert sim.stats.login_attempts == 1
    texts = []
    exc: BaseException | None = exc_info.value
    while exc is not None:
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    joined = "\n".join(texts)
    for value in [wrong, *_credentials(sim)]:
        assert value not in joined


def test_metrics_output_holds_no_secret_after_a_real_sync(db_url: str) -> None:
    """Every metric name, label and value rendered after a sync (with faults) is free of credentials."""
    sim = _sim()
    m = metrics.Metrics()
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=11))
        sim.faults.script("history", [503, 200, 429])

        settings = config.load(crash.worker_env(sim, db_url, ACCOUNTS, THINGSPACE_RETRY_MAX_RETRY_AFTER="0"))
        result = app.sync_once(settings, metrics=m)
        assert result.accounts[0].received > 0
    rendered = m.render().decode()
    logbook.record("metrics:render", rendered)
    assert "thingspace" in rendered.lower() or "sync" in rendered.lower()
    for value in logbook.secrets():
        assert value not in rendered


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        cwd=crash.REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    logbook.record_process_output("cli " + " ".join(args), proc.stdout, proc.stderr)
    return proc


def test_status_and_once_output_hold_no_secret(db_url: str) -> None:
    """`once`, `status` and `status --json` print no client secret, password or database password."""
    sim = _sim()
    db_password = "Db-Pw-" + os.urandom(4).hex() + "'\";--"
    secret.register(db_password)
    # Trust authentication ignores the password, so the run works and the password is still in the URL.
    url = psycopg.conninfo.make_conninfo(db_url, password=db_password)
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 120, seed=12))
        env = crash.worker_env(sim, url, ACCOUNTS)
        outputs = [_cli(["once"], env), _cli(["status"], env), _cli(["status", "--json"], env)]
    assert [p.returncode for p in outputs] == [0, 0, 0], [p.stderr[-500:] for p in outputs]
    status_json = json.loads(outputs[2].stdout)
    assert status_json, "status --json printed nothing"
    for proc in outputs:
        for value in [db_password, *_credentials(sim)]:
            assert value not in proc.stdout and value not in proc.stderr


def test_unreachable_database_error_hides_its_password() -> None:
    """Exit 3 for an unreachable database, and the message does not echo the URL's password."""
    pw = "Unreach-Pw-" + os.urandom(4).hex()
    secret.register(pw)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_", "PG"))}
    env.update(
        {
            "SYNC_DATABASE_URL": f"postgresql://sync:{pw}@127.0.0.1:1/sms?connect_timeout=2",
            "SYNC_ACCOUNTS": ACCOUNT,
            "THINGSPACE_CLIENT_ID": "x",
            "THINGSPACE_CLIENT_SECRET": "Unreach-Cs-" + pw,
            "THINGSPACE_USERNAME": "u",
            "THINGSPACE_PASSWORD": "Unreach-Up-" + pw,
        }
    )
    proc = _cli(["once"], env)
    assert proc.returncode == 3, proc.stderr[-500:]
    assert pw not in proc.stdout + proc.stderr


# --- SQL metacharacters reach the database only as parameters -------------------------------

NASTY = "x'); DROP TABLE sms_history; --\\ $$ $1 %s %(a)s \"q\" E'\\\\' ; COMMIT; \u0000"


def test_sql_metacharacters_in_account_token_and_text_are_stored_verbatim(db: psycopg.Connection) -> None:
    """Store functions given SQL metacharacters in account, token, text and device id store them verbatim."""
    account = "acct'; DROP TABLE sync_cursor; --"  # store must not rely on config's validation
    token = "tok'||pg_sleep(5)||'"
    msg = models.SMSMessage.from_wire(
        {
            "deviceIds": [{"id": "1' OR '1'='1", "kind": "imei"}],
            "message": NASTY,
            "timestamp": "2024-05-01T10:00:00Z",
        }
    )
    run_id = store.start_run(db, account)
    page = models.HistoryPage(account, (msg,), True, 202, token)
    result = store.commit_block(db, run_id, page)
    assert result.inserted == 1
    assert store.get_cursor(db, account) == token
    row = db.execute(
        "SELECT account_name, message, device_id, raw_json FROM sms_history WHERE account_name = %s",
        (account,),
    ).fetchone()
    assert row is not None
    assert row[0] == account
    assert row[1] == NASTY.replace("\u0000", "\ufffd")  # NUL is refused by Postgres text; replaced, reported
    assert row[2] == "1' OR '1'='1"
    assert json.loads(row[3]) == msg.raw
    tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"sms_message", "sync_cursor", "sync_run"} <= tables
    assert db.execute("SELECT to_regclass('sms_history') IS NOT NULL").fetchone() == (True,)
