"""Postgres goes away in the middle of a drain and comes back: the daemon survives, nothing is lost."""

from __future__ import annotations

import json
import signal

import psycopg
import pytest

from tests.reliability import crash, proxy

ACCOUNTS = ("0252012345-00011", "0252012345-00012")
PER_ACCOUNT = 3000


def _events(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def _worker_backends(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_daemon_survives_postgres_outage_mid_drain(db_url: str) -> None:
    """A database cut mid-drain is logged and retried on schedule; once back, the drain resumes exactly."""
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )
    # A little latency per request stretches the drain so the cut lands in the middle of it.
    sim.faults.latency = 0.02
    with sim, proxy.PgProxy(db_url) as pg:
        for account in ACCOUNTS:
            sim.inject(account, crash.make_messages(account, 0, PER_ACCOUNT, seed=7))
        env = crash.worker_env(
            sim,
            pg.conninfo(),
            ACCOUNTS,
            SYNC_INTERVAL_SECONDS="1",
            SYNC_JITTER_SECONDS="0",
            SYNC_SHUTDOWN_TIMEOUT_SECONDS="15",
            # The claims the cut kept the daemon from releasing are still its own when the database
            # is back: it must take them back at once, not wait out a lease far longer than the
            # 90 s the drain is given below.
            SYNC_CLAIM_LEASE_SECONDS="600",
        )
        daemon = crash.Worker(["run"], env, "outage-daemon")
        try:
            crash.wait_until(lambda: crash.row_count(db_url) >= 1000, 60, "the first 1000 rows")
            pg.cut()
            # A statement already forwarded before the cut may still commit: the outage
            # starts for real once the worker's backends have all gone.
            crash.wait_until(lambda: _worker_backends(db_url) == 0, 30, "the worker's backends to end")
            at_cut = crash.row_count(db_url)
            assert at_cut < 2 * PER_ACCOUNT, "the drain finished before the outage began"
            # The daemon notices, logs it and keeps trying on its schedule (refused reconnects).
            crash.wait_until(
                lambda: "Database" in daemon.output_so_far() or "database" in daemon.output_so_far(),
                30,
                "a logged database error",
            )
            crash.wait_until(lambda: pg.refused >= 2, 30, "two reconnect attempts during the outage")
            assert daemon.proc.poll() is None, "the daemon died during the outage"
            assert crash.row_count(db_url) == at_cut, "rows were written while the database was cut"
            pg.restore()
            crash.wait_until(
                lambda: crash.row_count(db_url) == 2 * PER_ACCOUNT, 90, "the drain to finish after the outage"
            )
            assert daemon.proc.poll() is None
            daemon.proc.send_signal(signal.SIGTERM)
            rc = daemon.wait(30)
        finally:
            daemon.kill()
    assert rc == 0, daemon.stderr[-2000:]
    cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.exact, cmp
    assert cmp.rows == 2 * PER_ACCOUNT
    # Resumed from the last committed block: no block was committed twice and no token acked twice.
    assert cmp.db_replays == 0
    for account in ACCOUNTS:
        assert all(n <= 1 for n in sim.token_acks(account).values())
    events = _events(daemon.stdout + daemon.stderr)
    failed = [e for e in events if e.get("event") == "account_run" and e.get("outcome") == "failed"]
    print(
        f"outage run: rows at cut {at_cut}, refused reconnects {pg.refused}, failed runs {len(failed)}, "
        f"rows {cmp.rows}/{cmp.expected}, missing {cmp.missing}, duplicated {cmp.duplicated}"
    )
    assert failed, "the outage produced no failed account_run event"
    assert any("Database" in str(e.get("error", "")) for e in failed)
