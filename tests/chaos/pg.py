"""The chaos run's Postgres: one server per run, a fresh database per schedule, and its faults.

One embedded server (``sync_worker.embedded``) serves the whole run, or the server
``SYNC_TEST_DATABASE_URL`` names; each schedule gets its own database copied from a migrated
template (the way ``tests/fixtures/database.py`` does it for tests), so no schedule sees another's
state. The faults a schedule can ask for act on that database only: every backend ended at once
(``pg_terminate_backend``) and a read-only episode (``default_transaction_read_only``, what a
failover looks like from outside). Cutting connections mid-transaction is the proxy's job
(``tests/reliability/proxy.py``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sync_worker import embedded, migrations
from tests.fixtures import database, pgbouncer

# The application name of the harness's own connection, which database faults leave alone.
OBSERVER: Final = "chaos-observer"


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The admin URL of the run's server: ``SYNC_TEST_DATABASE_URL``, or an embedded one.

    The embedded server is the run's own and is thrown away after it, so it runs without
    flushing to disk: a schedule kills worker processes, never the server or the machine, so
    durability on power loss is not what is tested, and every flush would cost the run its
    budget (creating a database from the template took ~0.5 s with fsync, a commit ~10 ms).
    """
    url = os.environ.get("SYNC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with database.embedded_without_flushes(asynchronous_commit=True) as admin_url:
        yield admin_url


@contextlib.contextmanager
def pooler(admin_url: str, mode: str | None) -> Iterator[int | None]:
    """``--pgbouncer MODE``: a PgBouncer in ``mode`` pooling in front of the run's server (its port),
    which the worker and the operator commands then reach the database through; None: no pooler."""
    if mode is None:
        yield None
        return
    with pgbouncer.running(admin_url, mode, pool_size=10) as bouncer:
        yield bouncer.port


def make_template(admin_url: str) -> str:
    """A migrated database the schedules' databases are copied from; returns its name."""
    srv = database.DatabaseServer(admin_url)
    url = srv.create_database(suffix="chaos_template")
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn)
    return dbname(url)


def drop_template(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class Databases:
    """Per-schedule databases on the run's server (one instance per process of the run).

    Creating a database from the template costs ~0.1-0.5 s of server time (hundreds of relation
    files): a background thread keeps ``ahead`` of them ready, so a schedule rarely waits for one.
    """

    def __init__(
        self, admin_url: str, template: str, *, ahead: int = 1, pooler_port: int | None = None
    ) -> None:
        self.admin_url = admin_url
        self.template = template
        self.pooler_port = pooler_port
        self._server = database.DatabaseServer(admin_url)
        # The copies made ahead and dropped behind are the test suite's (one mechanism for both).
        self._prepared = database.Prepared(self._server, template, ahead=max(1, ahead))
        self._drops: list[threading.Thread] = []
        # A server of this process's own, started for the first schedule that restarts its server.
        self._own: contextlib.ExitStack | None = None
        self._own_admin: str | None = None
        self._own_server: database.DatabaseServer | None = None
        self._admins: dict[str, str] = {}

    def create(self) -> str:
        """A fresh migrated database of its own (its URL)."""
        return self._prepared.take()

    def drop(self, url: str) -> None:
        server = self._own_server if self._admins.pop(url, None) is not None else self._server
        assert server is not None
        with contextlib.suppress(psycopg.Error):
            server.drop_database(url)

    def drop_later(self, url: str) -> None:
        """Drop ``url``'s database on another thread: nothing waits for it."""
        if url not in self._admins:
            self._prepared.drop_later(url)
            return
        thread = threading.Thread(target=self.drop, args=(url,), name="chaos-drop", daemon=False)
        thread.start()
        self._drops.append(thread)
        self._drops = [t for t in self._drops if t.is_alive()]

    def create_on_own_server(self) -> str:
        """A fresh migrated database on a server only this process uses (its URL), for a schedule that
        restarts its server: the run's server also serves the other job's schedules."""
        if self._own_admin is None:
            self._own = contextlib.ExitStack()
            self._own_admin = self._own.enter_context(
                database.embedded_without_flushes(asynchronous_commit=True)
            )
            self._own_server = database.DatabaseServer(self._own_admin)
        assert self._own_server is not None  # made with the server
        url = self._own_server.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.migrate(conn)
        self._admins[url] = self._own_admin
        return url

    def admin_for(self, url: str) -> str:
        """The admin URL of the server ``url``'s database is on."""
        return self._admins.get(url, self.admin_url)

    def restart(self, url: str) -> None:
        """Restart the server of ``url`` (its own server: ``create_on_own_server``)."""
        admin = self._admins.get(url)
        if admin is None:
            raise ValueError("only a database on this process's own server may have its server restarted")
        embedded.restart(admin)

    def close(self) -> None:
        self._prepared.close()
        for thread in self._drops:
            thread.join(timeout=30)
        if self._own is not None:
            self._own.close()
            self._own = None

    def worker_url(self, url: str) -> str:
        """The URL of ``url``'s database the worker and the operators use: through the run's
        PgBouncer when there is one (``pooler``), else ``url`` itself."""
        if self.pooler_port is None or url in self._admins:
            return url
        return pgbouncer.Bouncer("", self.pooler_port, Path()).url(url)

    def terminate_all(self, url: str) -> int:
        """End every backend connected to ``url``'s database (but the harness's own observer)."""
        with psycopg.connect(self.admin_for(url), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s",
                (dbname(url), OBSERVER),
            ).fetchall()
        return len(rows)

    def read_only(self, url: str, on: bool) -> None:
        """Make new sessions of ``url``'s database read-only (``on``) or writable again."""
        name = sql.Identifier(dbname(url))
        statement = (
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name)
            if on
            else sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name)
        )
        with psycopg.connect(self.admin_for(url), autocommit=True) as conn:
            conn.execute(statement)

    def failing(self, url: str, table: str, on: bool) -> None:
        """Make every write to ``table`` of ``url``'s database fail (``on``: a trigger that raises an
        error, which any session sees at once) or succeed again."""
        name = sql.Identifier(table)
        with psycopg.connect(url, autocommit=True, application_name=OBSERVER) as conn:
            # The harness's DDL must go through a read-only episode of the schedule's own.
            conn.execute("SET default_transaction_read_only = off")
            if on:
                conn.execute(_FAIL_FUNCTION)
                conn.execute(
                    sql.SQL(
                        "CREATE OR REPLACE TRIGGER chaos_fail BEFORE INSERT OR UPDATE OR DELETE ON {}"
                        " FOR EACH STATEMENT EXECUTE FUNCTION chaos_fail()"
                    ).format(name)
                )
            else:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS chaos_fail ON {}").format(name))


# The failing statement: raised by a trigger, a plain error (not a lost connection) on a live session.
_FAIL_FUNCTION: Final = (
    "CREATE OR REPLACE FUNCTION chaos_fail() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'chaos: a failing statement on %', TG_TABLE_NAME; END $$"
)


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])
