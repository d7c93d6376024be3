"""The login guard against real Postgres and the simulator, which locks a user per user as the vendor does.

Every scenario asserts the simulator's own count of consecutive failed logins of the user: it must
never reach 5 (the vendor's lock-out), whatever credentials, processes or lost answers are involved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync_worker import app, config, errors, guard, secret, simulator
from sync_worker import db as database
from sync_worker.simulator import faults as sim_faults
from tests.integration.test_cli_e2e import EventReader, cli, free_port, http_get
from tests.integration.test_scheduler import GuardGauge
from tests.integration.test_sync import ACCOUNT, backlog, make_settings, stored_raw
from tests.reliability import proxy

LOCKED_AT = 5


def wrong_password(
    sim: simulator.Simulator, db_url: str, password: str = "not-the-password", **env: str
) -> config.Settings:
    return make_settings(sim, db_url, [ACCOUNT], THINGSPACE_PASSWORD=password, **env)


def guard_of(settings: config.Settings, db_url: str, **kw: Any) -> guard.LoginGuard:
    return app.login_guard(settings, database.connector(db_url), **kw)


def fingerprint(settings: config.Settings) -> str:
    return settings.credentials().fingerprint(settings.base_url)


def record_refusals(settings: config.Settings, db_url: str, n: int) -> None:
    """Record ``n`` refused logins with ``settings``' credentials, as a refused worker would."""
    g = guard_of(settings, db_url)
    for _ in range(n):
        attempt = g.begin(fingerprint(settings))
        g.finish(attempt, fingerprint(settings), "refused", errors.LoginFailedError("refused"))


def worker_env(sim: simulator.Simulator, db_url: str, **extra: str) -> dict[str, str]:
    env = sim.worker_env(
        accounts=[ACCOUNT],
        database_url=db_url,
        inherit=True,
        SYNC_LOG_FORMAT="json",
        THINGSPACE_RETRY_MAX_WAIT="0.05",
    )
    env.update(extra)
    return env


def test_wrong_passwords_and_a_rotated_secret_never_reach_the_lock(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """Wrong password to exit 4, another wrong password, a rotated client secret: at most 4 in a row."""
    backlog(simulator, ACCOUNT, 5)
    first = wrong_password(simulator, db_url, "wrong-one")
    codes = [app.sync_once(first).exit_code for _ in range(4)]
    assert codes == [4, 4, 4, 4]
    assert simulator.stats.login_attempts == 3  # the soft stop for unchanged credentials

    typo = wrong_password(simulator, db_url, "wrong-two")
    codes = [app.sync_once(typo).exit_code for _ in range(4)]
    assert codes == [4, 4, 4, 4]
    assert simulator.stats.login_attempts == 4  # new credentials used the last headroom, no more

    simulator.config.client_secret = secret.Secret("rotated-client-secret")
    rotated = wrong_password(simulator, db_url, "wrong-two", THINGSPACE_CLIENT_SECRET="rotated-client-secret")
    assert [app.sync_once(rotated).exit_code for _ in range(3)] == [4, 4, 4]
    assert simulator.stats.login_attempts == 4
    assert simulator.peak_failed_login_streak() == 4 < LOCKED_AT
    assert guard_of(first, db_url).state().failures == 4


def test_two_processes_with_two_wrong_passwords(simulator: simulator.Simulator, db_url: str) -> None:
    """Two alternating `once` processes carrying different wrong passwords, 10 runs: never a 5th failure."""
    envs = [worker_env(simulator, db_url, THINGSPACE_PASSWORD=p) for p in ("wrong-a", "wrong-b")]
    codes = [cli(envs[i % 2], "once").returncode for i in range(10)]
    assert codes == [4] * 10
    # a, b, a: then both sets of credentials failed and the count is at the threshold.
    assert simulator.stats.login_attempts == 3
    assert simulator.peak_failed_login_streak() == 3 < LOCKED_AT


@pytest.mark.parametrize("fault", ["lost_response", "processed_504"])
def test_logins_whose_answer_is_lost_are_counted(
    simulator: simulator.Simulator, db_url: str, fault: str
) -> None:
    """8 runs whose login is processed (refused) but whose answer is lost or a 504: counted, stops at 3."""
    step: Any = (
        "lost_response" if fault == "lost_response" else sim_faults.gateway_error_after_processing(504)
    )
    simulator.faults.script("login", [step] * 8)
    settings = wrong_password(simulator, db_url)
    results = [app.sync_once(settings) for _ in range(8)]
    assert [r.exit_code for r in results[:3]] == [1, 1, 1]  # outcome unknown: a transient failure
    assert [r.exit_code for r in results[3:]] == [4] * 5  # then the guard stops these credentials
    assert simulator.stats.login_attempts == 3
    assert simulator.peak_failed_login_streak() == 3 < LOCKED_AT
    state = guard_of(settings, db_url).state()
    assert (state.failures, state.last_outcome) == (3, "unknown")


def test_unknown_outcome_of_a_good_login_is_cleared_by_the_next_success(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """A good login whose answer is lost counts as a failure until the next login succeeds."""
    backlog(simulator, ACCOUNT, 10)
    simulator.faults.script("login", ["lost_response"])
    settings = make_settings(simulator, db_url, [ACCOUNT])
    assert app.sync_once(settings).exit_code == 1
    assert guard_of(settings, db_url).state().failures == 1
    assert app.sync_once(settings).exit_code == 0
    assert guard_of(settings, db_url).state().failures == 0


@pytest.mark.parametrize("statuses", [[429], [408], [429, 408, 429]])
def test_daemon_recovers_by_itself_from_throttled_logins(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any], statuses: list[int]
) -> None:
    """A daemon whose first logins get 429/408 drains its queue by itself; nothing is counted or latched."""

    backlog(simulator, ACCOUNT, 40, seed=3)
    simulator.faults.retry_after = "0"
    simulator.faults.script("login", statuses)
    settings = make_settings(
        simulator,
        db_url,
        [ACCOUNT],
        SYNC_INTERVAL_SECONDS="1",
        SYNC_JITTER_SECONDS="0",
        THINGSPACE_RETRY_MAX_ATTEMPTS="1",
    )
    metrics = GuardGauge()
    stop = threading.Event()
    code: list[int] = []
    daemon = threading.Thread(
        target=lambda: code.append(
            app.run_daemon(settings, stop_event=stop, metrics=metrics, install_signal_handlers=False)
        )
    )
    daemon.start()
    try:
        assert metrics.wait_for("succeeded")
    finally:
        stop.set()
        daemon.join(timeout=30)
    assert code == [0]
    assert len(stored_raw(db, ACCOUNT)) == 40
    assert simulator.stats.faults[str(statuses[0])] >= 1
    assert simulator.peak_failed_login_streak() == 0
    assert guard_of(settings, db_url).state().failures == 0
    assert metrics.gauge() == 0


def readyz(port: int) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}/readyz")


def test_refused_daemon_resumes_after_fixed_password_and_reset(
    simulator: simulator.Simulator, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A running daemon refused once picks up a fixed password file and `auth reset` at its next run:
    /readyz goes 503 then 200, and the queue drains, with no restart."""
    backlog(simulator, ACCOUNT, 30, seed=5)
    password_file = tmp_path / "password"
    password_file.write_text("wrong-password\n")
    port = free_port()
    env = worker_env(
        simulator,
        db_url,
        THINGSPACE_PASSWORD="",
        THINGSPACE_PASSWORD_FILE=str(password_file),
        SYNC_INTERVAL_SECONDS="1",
        SYNC_JITTER_SECONDS="0",
        SYNC_METRICS_PORT=str(port),
    )
    del env["THINGSPACE_PASSWORD"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    events = EventReader(proc.stdout)
    try:
        events.wait_for({"login_failure_recorded"})
        status, body = readyz(port)
        assert status == 503
        assert "login" in body

        password_file.write_text(simulator.config.password.reveal() + "\n")
        reset = cli(env, "auth", "reset", "--yes")
        assert reset.returncode == 0, reset.stderr
        assert "zero again" in reset.stderr
        events.wait_for({"thingspace_session_started"})
        events.wait_for({"account_run"})
        assert readyz(port)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert len(stored_raw(db, ACCOUNT)) == 30
    assert simulator.peak_failed_login_streak() <= 3


def test_auth_reset_confirms_before_acting(simulator: simulator.Simulator, db_url: str) -> None:
    """`auth reset` off a terminal without --yes refuses (exit 2), keeping the count; --yes clears it."""
    settings = wrong_password(simulator, db_url)
    record_refusals(settings, db_url, 3)
    env = worker_env(simulator, db_url, THINGSPACE_PASSWORD="not-the-password")
    status = cli(env, "auth", "status", "--json")
    assert status.returncode == 4
    shown = json.loads(status.stdout)
    assert (shown["failures"], shown["tripped"], shown["ceiling"]) == (3, True, 4)
    assert shown["counted_as_user"] == simulator.config.username.casefold()
    assert "whatever the base URL" in cli(env, "auth", "status").stdout
    refused = cli(env, "auth", "reset")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert guard_of(settings, db_url).state().failures == 3
    assert cli(env, "auth", "reset", "--yes").returncode == 0
    assert guard_of(settings, db_url).state().failures == 0
    assert cli(env, "auth", "status").returncode == 0


def passes_at_once(settings: config.Settings, replicas: int) -> list[int]:
    """``replicas`` one-pass syncs started together, each on an account of its own (so the account
    lock is not what serialises their logins); their exit codes."""
    start = threading.Barrier(replicas)
    codes: list[int] = []
    lock = threading.Lock()

    def replica(i: int) -> None:
        start.wait()
        result = app.sync_once(settings, accounts=[f"0252012345-0002{i}"])
        with lock:
            codes.append(result.exit_code)

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return codes


def test_many_replicas_at_the_ceiling_never_make_a_fifth_failure(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """Eight replicas with new wrong credentials at 3 recorded failures: exactly one attempt, count 4."""
    simulator.config.max_failed_logins = LOCKED_AT
    old = wrong_password(simulator, db_url, "old-wrong")
    # The vendor saw those three failures too.
    assert [app.sync_once(old).exit_code for _ in range(3)] == [4, 4, 4]
    assert simulator.failed_login_streak() == 3
    new = wrong_password(simulator, db_url, "new-wrong")
    codes = passes_at_once(new, 8)
    assert codes == [4] * 8
    assert simulator.stats.login_attempts == 4
    assert simulator.peak_failed_login_streak() == 4 < LOCKED_AT


def test_concurrent_replicas_from_zero_stop_at_the_threshold(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """Eight replicas logging in with one bad password at once make only threshold attempts together."""
    settings = wrong_password(simulator, db_url)
    codes = passes_at_once(settings, 8)
    assert codes == [4] * 8
    assert simulator.stats.login_attempts == 3
    assert simulator.peak_failed_login_streak() == 3


def test_a_login_left_pending_by_a_vanished_process_expires_as_a_failure(db_url: str) -> None:
    """A lease never finished (a killed process) blocks others until it runs out, then counts as failed."""
    connect = database.connector(db_url)
    vanished = guard.LoginGuard(connect, username="u", threshold=3, lease_seconds=1)
    vanished.begin("fp-dead")  # never finished: the process "died"
    other = guard.LoginGuard(connect, username="u", threshold=3, max_wait_seconds=30)
    assert other.state().pending_live
    attempt = other.begin("fp-live")  # waits for the lease to run out
    state = other.state()
    assert state.failures == 2  # the vanished attempt stays counted, and this one is reserved
    assert "fp-dead" in state.failed_fingerprints
    other.finish(attempt, "fp-live", "succeeded")
    assert other.state().failures == 0


def test_waiting_for_another_login_is_bounded_by_deadline_and_stop(db_url: str) -> None:
    """A login waiting on another process's login gives up at its deadline, or at once when stopping."""
    connect = database.connector(db_url)
    holder = guard.LoginGuard(connect, username="w", threshold=3, lease_seconds=600)
    holder.begin("fp")
    waiter = guard.LoginGuard(connect, username="w", threshold=3)
    with pytest.raises(errors.TransientError, match="another process"):
        waiter.begin("fp", deadline=0.0)  # a deadline already past: no wait at all
    stop = threading.Event()
    stop.set()
    stopping = guard.LoginGuard(connect, username="w", threshold=3, stop_event=stop)
    with pytest.raises(errors.TransientError):
        stopping.begin("fp")


def test_count_is_per_user_whatever_the_platform_address_or_letter_case(db_url: str) -> None:
    """Guards of one user (any letter case) share one count; another user's count is apart."""
    connect = database.connector(db_url)
    a = guard.LoginGuard(connect, username="Ops", threshold=1)
    b = guard.LoginGuard(connect, username="OPS", threshold=1)
    c = guard.LoginGuard(connect, username="other", threshold=1)
    a.finish(a.begin("fp"), "fp", "refused")
    with pytest.raises(errors.LoginGuardTrippedError):
        b.begin("fp")  # the same credentials already failed for this user
    c.finish(c.begin("fp"), "fp", "refused")
    assert (a.state().failures, b.state().failures, c.state().failures) == (1, 1, 1)
    b.finish(b.begin("fp-new"), "fp-new", "succeeded")
    assert (a.state().failures, c.state().failures) == (0, 1)


def spelled_base_urls(sim: simulator.Simulator) -> list[str]:
    """Three spellings of the simulator's one address: what an operator may write in THINGSPACE_BASE_URL."""
    port = sim.base_url.split(":")[2].split("/")[0]
    return [f"http://127.0.0.1:{port}/api", f"http://localhost:{port}/api", f"http://LOCALHOST:{port}/api/"]


def test_url_spellings_and_username_case_never_lock_the_user(
    simulator: simulator.Simulator, db_url: str
) -> None:
    """Wrong passwords through three base URL spellings and three cases of the username, from separate
    clients and separate processes: one count, so the simulator (counting per case-folded user, as
    the vendor does) never sees a fifth failure in a row."""
    user = simulator.config.username
    spellings = spelled_base_urls(simulator)
    codes = []
    for base_url in spellings:
        for name in (user, user.upper(), user.capitalize()):
            settings = wrong_password(
                simulator, db_url, THINGSPACE_BASE_URL=base_url, THINGSPACE_USERNAME=name
            )
            codes.append(app.sync_once(settings).exit_code)
    for base_url in spellings:
        env = worker_env(
            simulator,
            db_url,
            THINGSPACE_PASSWORD="not-the-password",
            THINGSPACE_BASE_URL=base_url,
            THINGSPACE_USERNAME=user.upper(),
        )
        codes.append(cli(env, "once").returncode)
    assert codes == [4] * 12
    assert simulator.peak_failed_login_streak() == 4 < LOCKED_AT
    # Each spelling's fingerprint is new credentials to the soft stop, so the ceiling is what holds.
    assert simulator.stats.login_attempts == 4
    assert simulator.peak_failed_login_streak(user.upper()) == 4
    another_case = wrong_password(simulator, db_url, THINGSPACE_USERNAME=user.title())
    assert guard_of(another_case, db_url).state().failures == 4


def test_a_row_merged_under_another_folding_of_the_name_is_adopted(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """A count 0009 merged under lower(name) joins the guard's casefold key on first read: added, not lost."""
    # lower('STRAßE') is 'straße' in Postgres, 'STRAßE'.casefold() is 'strasse' in Python.
    db.execute(
        "INSERT INTO login_guard (username, consecutive_failures, failed_fingerprints, last_outcome) "
        "VALUES ('straße', 2, '{fp-old}', 'refused'), ('strasse', 1, '{fp-mid}', 'refused')"
    )
    g = guard.LoginGuard(database.connector(db_url), username="STRAßE", threshold=3)
    state = g.state()
    assert (state.failures, state.failed_fingerprints) == (3, frozenset({"fp-old", "fp-mid"}))
    assert db.execute("SELECT username FROM login_guard").fetchall() == [("strasse",)]
    g.finish(g.begin("fp-new"), "fp-new", "refused")
    with pytest.raises(errors.LoginGuardTrippedError):
        g.begin("another-fp")  # 4: the ceiling


def test_unreachable_database_fails_closed() -> None:
    """A guard that cannot read its count refuses to log in."""
    dead = guard.LoginGuard(
        database.connector("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1"),
        username="u",
        threshold=3,
    )
    with pytest.raises(errors.DatabaseUnavailableError):
        dead.begin("fp")


def test_threshold_outside_vendor_margin_is_refused(db_url: str) -> None:
    """A threshold of 5 or more (the vendor's lock-out) is a configuration error."""
    with pytest.raises(errors.ConfigError):
        guard.LoginGuard(database.connector(db_url), username="u", threshold=5)


def test_a_login_left_by_a_dead_process_on_this_host_is_not_waited_for(db_url: str) -> None:
    """A lease whose holder process on this host is gone (killed mid-login) is counted failed at once."""
    script = (
        "import sys; from sync_worker import db, guard; "
        "g = guard.LoginGuard(db.connector(sys.argv[1]), "
        "username='d', threshold=3, lease_seconds=600); g.begin('fp-killed')"
    )
    subprocess.run([sys.executable, "-c", script, db_url], check=True, timeout=60)
    g = guard.LoginGuard(database.connector(db_url), username="d", threshold=3)
    attempt = g.begin("fp", deadline=0.0)  # no wait allowed: the dead holder must not block
    state = g.state()
    assert state.failures == 2 and "fp-killed" in state.failed_fingerprints
    g.finish(attempt, "fp", "refused")
    assert g.state().failures == 2


def test_a_verdict_the_database_missed_is_recorded_when_it_is_back_not_waited_out(db_url: str) -> None:
    """A good login whose verdict the database could not take (it went away mid-login) does not hold
    this process's next login off for its lease: the verdict is recorded once the database is back."""
    with proxy.PgProxy(db_url) as pg_proxy:
        g = guard.LoginGuard(
            database.connector(pg_proxy.conninfo()), username="r", threshold=3, lease_seconds=600
        )
        attempt = g.begin("fp")
        pg_proxy.cut()
        g.finish(attempt, "fp", "succeeded")  # the database is gone: not recorded
        observer = guard.LoginGuard(database.connector(db_url), username="r", threshold=3)
        held = observer.state()
        assert held.pending_attempt == attempt and held.failures == 1  # counted until it is recorded
        with pytest.raises(errors.DatabaseUnavailableError):
            g.begin("fp")  # still gone: fails closed, and the verdict is kept
        pg_proxy.restore()
        again = g.begin("fp", deadline=0.0)  # no wait allowed: its own lease must not block it
    state = observer.state()
    assert (state.pending_attempt, state.failures, state.last_outcome) == (again, 1, "succeeded")
    assert state.last_success_at is not None


def test_a_late_verdict_whose_lease_ran_out_changes_nothing(db_url: str) -> None:
    """A verdict recorded late, after its lease ran out and another login failed, is dropped: the
    expiry counted it as failed, and a late success must not zero the failure recorded since."""
    with proxy.PgProxy(db_url) as pg_proxy:
        g = guard.LoginGuard(
            database.connector(pg_proxy.conninfo()), username="s", threshold=3, lease_seconds=1
        )
        attempt = g.begin("fp")
        pg_proxy.cut()
        g.finish(attempt, "fp", "succeeded")
        other = guard.LoginGuard(database.connector(db_url), username="s", threshold=3, max_wait_seconds=30)
        other.finish(other.begin("fp-other"), "fp-other", "refused")  # waits out the lease, then fails
        pg_proxy.restore()
        state = g.state()  # records what it kept: nothing, the reservation is gone
    assert (state.failures, state.last_outcome, state.pending_attempt) == (2, "refused", None)
    assert state.failed_fingerprints == frozenset({"fp", "fp-other"})
