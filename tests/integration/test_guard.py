"""The login lock-out guard against real Postgres and the simulator's login endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from sync_worker import client, config, errors, guard, retry, secret, simulator, store, sync
from tests.integration.test_sync import ACCOUNT, backlog, make_settings


def wrong_password(sim: simulator.Simulator, db_url: str, **env: str) -> config.Settings:
    return make_settings(sim, db_url, [ACCOUNT], THINGSPACE_PASSWORD="not-the-password", **env)


def new_guard(settings: config.Settings, db_url: str) -> guard.LoginGuard:
    return guard.LoginGuard(
        config.connection_factory(db_url),
        principal=settings.username,
        fingerprint=settings.credential_fingerprint(),
        threshold=settings.login_guard_threshold,
    )


def test_guard_stops_at_threshold_across_restarts(simulator: simulator.Simulator, db_url: str) -> None:
    """Repeated passes (each a fresh client and guard) with a bad password make exactly threshold logins."""
    backlog(simulator, ACCOUNT, 5)
    settings = wrong_password(simulator, db_url)
    results = [sync.sync_once(settings) for _ in range(5)]
    assert [r.exit_code for r in results] == [4] * 5
    assert simulator.stats.login_attempts == settings.login_guard_threshold == 3
    assert [r.accounts[0].outcome for r in results[3:]] == ["guard_tripped", "guard_tripped"]
    assert new_guard(settings, db_url).failures() == 3
    assert new_guard(settings, db_url).tripped()


def test_threshold_one_allows_a_single_attempt(simulator: simulator.Simulator, db_url: str) -> None:
    """With SYNC_LOGIN_GUARD_THRESHOLD=1 only one bad login ever reaches the API."""
    settings = wrong_password(simulator, db_url, SYNC_LOGIN_GUARD_THRESHOLD="1")
    for _ in range(3):
        assert sync.sync_once(settings).exit_code == 4
    assert simulator.stats.login_attempts == 1


def test_new_credentials_and_reset_clear_the_guard(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A tripped guard lets corrected credentials log in (new fingerprint); auth reset clears the count."""
    backlog(simulator, ACCOUNT, 20)
    bad = wrong_password(simulator, db_url)
    for _ in range(4):
        sync.sync_once(bad)
    assert simulator.stats.login_attempts == 3

    good = make_settings(simulator, db_url, [ACCOUNT])
    ok = sync.sync_once(good)
    assert ok.exit_code == 0, ok.summary()
    assert ok.accounts[0].received == 20
    assert new_guard(good, db_url).failures() == 0

    for _ in range(4):
        sync.sync_once(bad)
    assert simulator.stats.login_attempts == 1 + 3 + 3
    assert store.reset_login_guard(db, bad.username) == 1
    assert new_guard(bad, db_url).failures() == 0
    sync.sync_once(bad)
    assert simulator.stats.login_attempts == 1 + 3 + 3 + 1


def test_concurrent_replicas_never_exceed_threshold(simulator: simulator.Simulator, db_url: str) -> None:
    """Eight replicas logging in with a bad password at once make only threshold attempts together."""
    settings = wrong_password(simulator, db_url)
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def replica(i: int) -> None:
        api = make_client_with_password(simulator, "not-the-password", new_guard(settings, db_url))
        try:
            start.wait()
            # One account each: the account lock must not be what serialises them.
            result = sync.sync_account(api, f"0252012345-0002{i}", config.connection_factory(db_url))
        finally:
            api.close()
        with lock:
            outcomes.append(result.error_kind or result.outcome)

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert simulator.stats.login_attempts == 3
    assert len(outcomes) == 8
    assert set(outcomes) <= {"LoginFailedError", "LoginGuardTrippedError"}
    assert outcomes.count("LoginFailedError") == 3


def make_client_with_password(
    sim: simulator.Simulator, password: str, login_guard: guard.LoginGuard
) -> client.ThingSpaceClient:
    return client.ThingSpaceClient(
        client.ClientConfig(
            base_url=sim.base_url,
            client_id=sim.config.client_id,
            client_secret=sim.config.client_secret,
            username=sim.config.username,
            password=secret.Secret(password),
            timeout=(2.0, 5.0),
            retry=retry.RetryPolicy(max_attempts=1, sleep=lambda _s: None),
            login_guard=login_guard,
            allow_insecure_loopback=True,
        )
    )


def test_unreachable_database_fails_closed(simulator: simulator.Simulator) -> None:
    """A guard that cannot read its count refuses to log in (no attempt reaches the API)."""
    dead = guard.LoginGuard(
        "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1",
        principal="u",
        fingerprint="f",
        threshold=3,
    )
    with pytest.raises(errors.DatabaseUnavailableError):
        dead.before_login()


def test_threshold_outside_vendor_margin_is_refused(db_url: str) -> None:
    """A threshold of 5 or more (the vendor's lock-out) is a configuration error."""
    with pytest.raises(errors.ConfigError):
        guard.LoginGuard(db_url, principal="u", fingerprint="f", threshold=5)


def test_guard_holds_across_processes(simulator: simulator.Simulator, db_url: str) -> None:
    """Five separate `sync-worker once` processes with a bad password log in exactly threshold times."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_"))},
        "SYNC_DATABASE_URL": db_url,
        "THINGSPACE_BASE_URL": simulator.base_url,
        "THINGSPACE_ALLOW_INSECURE_LOOPBACK": "1",
        "THINGSPACE_CLIENT_ID": simulator.config.client_id,
        "THINGSPACE_CLIENT_SECRET": simulator.config.client_secret.reveal(),
        "THINGSPACE_USERNAME": simulator.config.username,
        "THINGSPACE_PASSWORD": "not-the-password",
        "SYNC_ACCOUNTS": ACCOUNT,
        "SYNC_LOG_FORMAT": "json",
    }
    codes = [
        subprocess.run(
            [sys.executable, "-m", "sync_worker", "once"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        ).returncode
        for _ in range(5)
    ]
    assert codes == [4] * 5
    assert simulator.stats.login_attempts == 3
