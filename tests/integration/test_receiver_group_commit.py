"""The receiver's group commit against a real Postgres over real HTTP: concurrent callbacks share a
transaction, no 2xx goes out before its own callback is committed, and a callback the database
refuses fails alone, not with the batch it was written in."""

from __future__ import annotations

import concurrent.futures
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from sync_worker import callback_store, db, receiver
from tests.integration import push
from tests.reliability import crash

# Long enough that a lock the test holds on purpose is waited for, not timed out; and that the
# pool's first connection, opened in the background at start, is waited for (on a loaded machine
# it took more than the 1 s default: the first batch was answered 503, a flake).
PATIENT: dict[str, Any] = {
    "lock_timeout": 30.0,
    "statement_timeout": 60.0,
    "commit_timeout": 60.0,
    "acquire_timeout": 30.0,
}


def bodies(n: int, **extra: Any) -> list[bytes]:
    """``n`` callbacks of one distinct message each."""
    return [push.envelope(m, requestId=f"req-{i}", **extra) for i, m in enumerate(push.messages(n))]


@contextlib.contextmanager
def posting(
    port: int, payloads: list[bytes]
) -> Iterator[Callable[[], list[tuple[int, dict[str, Any], Any]]]]:
    """Post every payload at once, each on its own connection; the callable returns the answers."""
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        futures = [pool.submit(push.post_full, port, b) for b in payloads]
        yield lambda: [f.result(timeout=60) for f in futures]


def committed_transactions(db_url: str) -> int:
    """How many distinct transactions wrote the kept callbacks (rows a transaction wrote share its xmin)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(DISTINCT xmin::text) FROM sms_callback").fetchone()
    assert row is not None
    return int(row[0])


def stored_request_ids(db_url: str) -> set[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return {
            str(r[0]) for r in conn.execute("SELECT request_id FROM sms_callback WHERE shape <> 'unknown'")
        }


def transactions(r: receiver.Receiver, outcome: str) -> float:
    return push.sample(r.metrics, "thingspace_sync_callback_commit_transactions_total", outcome=outcome)


def test_concurrent_callbacks_share_transactions_and_each_2xx_follows_its_commit(db_url: str) -> None:
    """24 callbacks arriving while a transaction is held up are committed in 2 transactions, not 24,
    and every one is answered 200 only once its row is there."""
    with (
        push.running_receiver(db.connector(db_url), committers=1, **PATIENT) as r,
        psycopg.connect(db_url) as holder,
    ):
        holder.execute("LOCK TABLE sms_callback IN ACCESS EXCLUSIVE MODE")
        with posting(r.port, bodies(24)) as answers:
            # The first callbacks are being written (waiting on the lock), the others queue behind.
            crash.wait_until(lambda: r._committer.waiting() == 24, 30, "24 callbacks with the committer")
            crash.wait_until(lambda: waiting_somewhere(holder), 30, "a transaction waiting on the lock")
            assert committed_transactions_while_locked(holder) == 0
            holder.rollback()
            got = answers()
    assert [a[:2] for a in got] == [(200, {"status": "stored", "messages": 1, "inserted": 1})] * 24
    assert committed_transactions(db_url) == 2
    assert transactions(r, "committed") == 2
    assert len(push.history(db_url)) == 24


def committed_transactions_while_locked(holder: psycopg.Connection[Any]) -> int:
    """Rows of sms_callback the holder sees (it holds the table's lock, so it may read it)."""
    row = holder.execute("SELECT count(*) FROM sms_callback").fetchone()
    assert row is not None
    return int(row[0])


def test_a_transaction_killed_between_its_writes_and_its_commit_answers_no_2xx(db_url: str) -> None:
    """The receiver's session is terminated at COMMIT, after every row of its batch was written: none of
    its callbacks (nor those queued behind it) is answered 2xx, nothing is stored, and the platform's
    retries afterwards are all stored."""
    name = f"receiver-{uuid.uuid4().hex[:12]}"
    payloads = bodies(8)
    with psycopg.connect(db_url, autocommit=True) as admin:
        # A deferred trigger runs at COMMIT, after the writes: it waits there for a lock the test holds.
        admin.execute(
            "CREATE FUNCTION test_wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_advisory_xact_lock(424242); RETURN NULL; END $$"
        )
        admin.execute(
            "CREATE CONSTRAINT TRIGGER test_wait_at_commit AFTER INSERT ON sms_callback "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_wait_at_commit()"
        )
    with (
        push.running_receiver(db.connector(db_url, application_name=name), committers=1, **PATIENT) as r,
        psycopg.connect(db_url, autocommit=True) as holder,
    ):
        holder.execute("SELECT pg_advisory_lock(424242)")
        with posting(r.port, payloads) as answers:
            crash.wait_until(lambda: r._committer.waiting() == 8, 30, "8 callbacks with the committer")
            waiting = waiting_at_commit(holder, name)
            crash.wait_until(lambda: bool(waiting()), 30, "the receiver's commit waiting on the lock")
            holder.execute("SELECT pg_terminate_backend(%s)", (waiting()[0],))
            got = answers()
        holder.execute("SELECT pg_advisory_unlock(424242)")
        assert [a[0] for a in got] == [503] * 8
        assert {a[2] for a in got} == {"2"}
        assert push.count(db_url, "sms_callback") == 0
        assert push.count(db_url, "sms_history") == 0
        # Every 2xx is a row: the platform's redeliveries, with nothing holding the commit now.
        with posting(r.port, payloads) as answers:
            again = answers()
    assert [a[0] for a in again] == [200] * 8
    assert stored_request_ids(db_url) == {f"req-{i}" for i in range(8)}
    assert len(push.history(db_url)) == 8


def waiting_at_commit(holder: psycopg.Connection[Any], name: str) -> Callable[[], list[int]]:
    def pids() -> list[int]:
        return [
            int(row[0])
            for row in holder.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (name,),
            )
        ]

    return pids


@pytest.mark.parametrize("when", ["statement", "commit"])
def test_a_callback_the_database_refuses_fails_alone_and_its_batch_neighbours_are_stored(
    db_url: str, when: str
) -> None:
    """A callback the database refuses (at its statement, or only at COMMIT) in a batch of 7: its 6
    neighbours are answered 200 and stored (the batch is split and each written alone); it alone
    gets 500, and its body is kept unread for a look."""
    deferred = "CONSTRAINT TRIGGER" if when == "commit" else "TRIGGER"
    timing = "DEFERRABLE INITIALLY DEFERRED" if when == "commit" else ""
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.request_id = 'poison' AND NEW.shape <> 'unknown' THEN "
            "RAISE EXCEPTION 'refused on purpose'; END IF; RETURN NULL; END $$"
        )
        admin.execute(
            f"CREATE {deferred} test_refuse_poison AFTER INSERT ON sms_callback {timing} "  # fixed text
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_poison()"
        )
    first, *rest = bodies(7)
    poison = push.envelope(push.messages(1, start=100)[0], requestId="poison")
    batch = [*rest[:3], poison, *rest[3:]]
    with (
        push.running_receiver(db.connector(db_url), committers=1, **PATIENT) as r,
        psycopg.connect(db_url) as holder,
        concurrent.futures.ThreadPoolExecutor(1) as opener,
    ):
        holder.execute("LOCK TABLE sms_callback IN ACCESS EXCLUSIVE MODE")
        # A first callback holds the committer (it waits on the lock) while the batch of 7 queues.
        opened = opener.submit(push.post_full, r.port, first)
        crash.wait_until(
            lambda: r._committer.queued() == 0 and waiting_somewhere(holder), 30, "first written"
        )
        with posting(r.port, batch) as answers:
            crash.wait_until(lambda: r._committer.queued() == 7, 30, "the batch of 7 queued")
            holder.rollback()
            got = answers()
        assert opened.result(timeout=60)[0] == 200
        assert transactions(r, "split") == 1
    statuses = [a[0] for a in got]
    assert statuses == [200, 200, 200, 500, 200, 200, 200]
    assert stored_request_ids(db_url) == {f"req-{i}" for i in range(7)}
    assert len(push.history(db_url)) == 7
    with psycopg.connect(db_url, autocommit=True) as conn:
        kept = conn.execute("SELECT shape, messages FROM sms_callback WHERE request_id = 'poison'").fetchall()
    assert kept == [("unknown", 0)]


def waiting_somewhere(holder: psycopg.Connection[Any]) -> bool:
    """Whether some session waits for a lock on sms_callback (the holder's lock)."""
    row = holder.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = 'sms_callback'::regclass AND NOT granted"
    ).fetchone()
    return row is not None and int(row[0]) > 0


def item(body: bytes, account: str = push.ACCOUNT) -> tuple[Any, Any]:
    """(models.KeptCallback, messages) of ``body`` as the receiver makes them, for store_callbacks."""
    import datetime as dt  # noqa: PLC0415  # only the tests that build callbacks themselves

    from sync_worker import callbacks, models, secret  # noqa: PLC0415

    credentials = callbacks.ListenerCredentials(push.USER, secret.Secret(push.PASSWORD))
    at = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
    obj = callbacks.decode(body)
    read = callbacks.read(obj, account, credentials, received_at=at)
    kept_body, exact = callbacks.redact(body, obj)
    kept = models.KeptCallback(
        account, read.shape, read.report(), read.request_id, read.callback_count, kept_body, exact, None, at
    )
    return kept, read.messages


def test_store_callbacks_writes_a_batch_in_one_transaction_with_a_redelivery_inside_it(
    db: psycopg.Connection[Any],
) -> None:
    """callback_store.store_callbacks with two callbacks and a byte-identical redelivery of the first: one
    transaction, two sms_callback rows (the redelivery is the first's row, seen twice), each message
    once, and each result saying what its own callback did."""

    one, two = bodies(2)
    results = callback_store.store_callbacks(db, [item(one), item(two), item(one)])
    assert [(r.messages, r.inserted, r.first_seen) for r in results] == [
        (1, 1, True),
        (1, 1, True),
        (1, 0, False),
    ]
    assert results[2].callback_id == results[0].callback_id
    rows = db.execute("SELECT request_id, seen_count, xmin::text FROM sms_callback ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("req-0", 2), ("req-1", 1)]
    assert len({r[2] for r in rows}) == 1
    assert len(db.execute("SELECT 1 FROM sms_history").fetchall()) == 2


def test_store_callbacks_counts_a_message_shared_by_two_callbacks_for_the_first_only(
    db: psycopg.Connection[Any],
) -> None:
    """One batch: a two-device message in two different bodies, a message stored before, and a callback
    of a second account with the same message: each new row is counted for the first callback that
    holds it (as if written one after the other), every row and device row is there once, and the
    second account gets its own row."""

    other = "0252012345-00092"
    shared = {
        "deviceIds": [{"id": "350000000000777", "kind": "imei"}, {"id": "350000000000778", "kind": "imei"}],
        "message": "two devices",
        "timestamp": "2026-02-01T11:00:00Z",
    }
    old, new = push.messages(2, start=40)
    callback_store.store_callbacks(db, [item(push.envelope(old, requestId="before"))])
    results = callback_store.store_callbacks(
        db,
        [
            item(push.envelope(shared, requestId="a")),
            item(push.envelope(shared, requestId="b")),
            item(push.envelope(old, requestId="c")),
            item(push.envelope(new, requestId="d")),
            item(push.envelope(shared, requestId="e"), other),
        ],
    )
    assert [(r.messages, r.inserted, r.first_seen) for r in results] == [
        (1, 1, True),
        (1, 0, True),
        (1, 0, True),
        (1, 1, True),
        (1, 1, True),
    ]
    kept = db.execute("SELECT request_id, inserted, cardinality(message_keys) FROM sms_callback").fetchall()
    assert sorted(kept) == [("a", 1, 1), ("b", 0, 1), ("before", 1, 1), ("c", 0, 1), ("d", 1, 1), ("e", 1, 1)]
    per_account = db.execute(
        "SELECT account_name, count(*) FROM sms_history GROUP BY account_name ORDER BY account_name"
    ).fetchall()
    assert per_account == [(push.ACCOUNT, 3), (other, 1)]
    devices = db.execute(
        "SELECT account_name, device_id FROM sms_by_device WHERE position > 0 ORDER BY 1"
    ).fetchall()
    assert devices == [(push.ACCOUNT, "350000000000778"), (other, "350000000000778")]
