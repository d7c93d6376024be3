"""The worker behind a real PgBouncer: session pooling works, transaction and statement pooling are
refused at start-up (before any API request), and the check that tells them apart.

Why transaction pooling is refused rather than supported: docs/operations.md, "PgBouncer".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_worker import db, errors, simulator
from tests.fixtures import pgbouncer
from tests.integration import test_cli_e2e as e2e

pytestmark = pytest.mark.usefixtures("pgbouncers")

FAILURE = "SYNC_DATABASE_URL: cannot connect"


def _connections(url: str) -> tuple[db.ConnectionFactory, list[psycopg.Connection[Any]]]:
    """A plain factory of ``url``'s connections that remembers what it opened (to close them)."""
    opened: list[psycopg.Connection[Any]] = []

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(url, autocommit=True)
        opened.append(conn)
        return conn

    return connect, opened


@contextlib.contextmanager
def _checked(url: str) -> Iterator[list[psycopg.Connection[Any]]]:
    """Run ``db.check_session_pooling`` on a connection to ``url``; yields every connection it used."""
    connect, opened = _connections(url)
    try:
        db.check_session_pooling(connect(), connect, failure=FAILURE)
        yield opened
    finally:
        for conn in opened:
            conn.close()


def test_the_check_passes_on_postgres_itself_without_a_second_connection(db_url: str) -> None:
    """Straight to Postgres the check costs one query: the server's own key, no probe connection."""
    with _checked(db_url) as opened:
        assert len(opened) == 1


def test_the_check_passes_through_pgbouncer_in_session_mode(
    pgbouncers: dict[str, pgbouncer.Bouncer], db_url: str
) -> None:
    """Session pooling keeps one server session per client: the check finds a pooler and passes it."""
    with _checked(pgbouncers["session"].url(db_url)) as opened:
        assert len(opened) == 2  # the pooler was seen, so the mode was probed


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_the_check_refuses_pgbouncer_in_transaction_and_statement_mode(
    pgbouncers: dict[str, pgbouncer.Bouncer], db_url: str, mode: str
) -> None:
    """Transaction and statement pooling are refused with a ConfigError naming the mode and the remedy."""
    with pytest.raises(errors.ConfigError) as refused, _checked(pgbouncers[mode].url(db_url)):
        pass
    message = str(refused.value)
    assert message.startswith(f"{FAILURE}: refused: use session pooling (PgBouncer: pool_mode = session)")
    assert f"pool_mode = {mode}" in message


def test_the_check_refuses_transaction_mode_with_round_robin_and_a_warm_pool(db_url: str) -> None:
    """With ``server_round_robin`` (idle servers reused in turn, not most recent first) and several
    idle servers, transaction pooling is still found: the client's own statements move."""
    with pgbouncer.running(db_url, "transaction", extra=("server_round_robin = 1",)) as bouncer:
        url = bouncer.url(db_url)
        # Warm the pool: three server connections, all idle afterwards.
        with contextlib.ExitStack() as stack:
            holders = [stack.enter_context(psycopg.connect(url, autocommit=True)) for _ in range(3)]
            for conn in holders:
                stack.enter_context(conn.transaction())
                conn.execute("SELECT 1")
        with pytest.raises(errors.ConfigError, match="pool_mode = transaction"), _checked(url):
            pass


def test_transaction_pooling_hands_a_session_advisory_lock_to_another_client(
    pgbouncers: dict[str, pgbouncer.Bouncer], db_url: str
) -> None:
    """The hazard the refusal prevents: under transaction pooling a second client "takes" an account
    lock the first one holds (it lands on the same server session), so the lock excludes nobody;
    under session pooling it is refused, as on Postgres itself."""
    key = 0x5EC5
    for mode, shared in (("transaction", True), ("session", False)):
        url = pgbouncers[mode].url(db_url)
        with psycopg.connect(url, autocommit=True) as first, psycopg.connect(url, autocommit=True) as second:
            assert first.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
            assert second.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (shared,), mode
            first.execute("SELECT pg_advisory_unlock_all()")
            second.execute("SELECT pg_advisory_unlock_all()")


def test_once_through_pgbouncer_session_mode_stores_every_message_exactly_once(
    pgbouncers: dict[str, pgbouncer.Bouncer], simulator: simulator.Simulator, db_url: str
) -> None:
    """`once` through PgBouncer in session pooling stores the delivered set of 3 accounts exactly,
    and a second `once` given 30 of them again inserts nothing."""
    sizes = (700, 650, 650)
    for i, (account, n) in enumerate(zip(e2e.ACCOUNTS, sizes, strict=True)):
        simulator.inject(account, e2e.distinct_backlog(n, seed=i + 1))
    env = e2e.worker_env(simulator, pgbouncers["session"].url(db_url))

    first = e2e.cli(env, "once")
    assert first.returncode == 0, first.stderr
    assert (e2e.summary(first)["inserted"], e2e.summary(first)["exit_code"]) == (2000, 0)
    for account, n in zip(e2e.ACCOUNTS, sizes, strict=True):
        assert len(simulator.acknowledged(account)) == n
        assert e2e.stored(db_url, account) == e2e.canonical(simulator.acknowledged(account))

    for account in e2e.ACCOUNTS:
        simulator.requeue(account, 10)
    second = e2e.cli(env, "once")
    assert second.returncode == 0, second.stderr
    assert (e2e.summary(second)["received"], e2e.summary(second)["inserted"]) == (30, 0)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("command", [["once"], ["migrate"], ["status"]])
def test_the_cli_refuses_transaction_and_statement_pooling_before_any_request(
    pgbouncers: dict[str, pgbouncer.Bouncer],
    simulator: simulator.Simulator,
    db_url: str,
    mode: str,
    command: list[str],
) -> None:
    """`once`, `migrate` and `status` through PgBouncer in transaction or statement pooling exit 2
    with the remedy (session pooling) and PgBouncer's setting, before any request to the API."""
    simulator.inject(e2e.ACCOUNTS[0], e2e.distinct_backlog(5, seed=1))
    proc = e2e.cli(e2e.worker_env(simulator, pgbouncers[mode].url(db_url)), *command)
    assert proc.returncode == 2, proc.stderr
    assert "use session pooling (PgBouncer: pool_mode = session)" in proc.stderr
    assert f"pool_mode = {mode}" in proc.stderr
    assert not simulator.stats.requests
    assert len(simulator.queued(e2e.ACCOUNTS[0])) == 5


def test_a_server_session_opened_read_only_is_dropped_after_its_error_not_handed_on(
    pgbouncers: dict[str, pgbouncer.Bouncer], pg_server: Any, db_url: str
) -> None:
    """Behind PgBouncer (session pooling), a server session opened while the database was read-only
    stays read-only after it is writable again; each worker connection that meets that error takes
    its server session with it, so writes work again after at most one failure per session opened
    during the episode (two here: the check's probe and the write), not only after PgBouncer's
    server_lifetime (the chaos run's seed 8)."""
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    connect = db.connector(pgbouncers["session"].url(db_url), failure=FAILURE)
    statement = "CREATE TABLE IF NOT EXISTS pgbouncer_probe (n int)"

    def write() -> bool:
        try:
            with db.session(connect) as conn, db.transaction(conn) as cur:
                cur.execute(statement)
        except errors.StoreError as exc:
            assert "read-only transaction" in str(exc)
            return False
        return True

    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        try:
            assert not write()
        finally:
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    attempts = [write() for _ in range(6)]
    assert True in attempts[:3], attempts
