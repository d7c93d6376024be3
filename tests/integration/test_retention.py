"""Retention: a message goes only when its timestamp and its storage are both older than the window;
old ranges are dropped whole, old rows of ranges still fed go in batches, counts are exact."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sync_worker import cli, models, queries, retention, scheduler, store

ACCOUNT = "0252012345-00001"
NOW = dt.datetime.now(dt.UTC)
OLD = [dt.datetime(2023, 1, 15, tzinfo=dt.UTC), dt.datetime(2023, 2, 3, tzinfo=dt.UTC)]
LONG_AGO = "800 days"


def _wire(text: str, at: dt.datetime | None, devices: int = 1) -> dict[str, Any]:
    """A message; devices=2 gives it four distinct devices, so that its fourth has an
    sms_message_device row (the second and third are columns of its row since migration 0018)."""
    n = sum(map(ord, text))
    listed = [
        {"id": f"{n:015d}", "kind": "imei"},
        {"id": f"{n}7", "kind": "mdn"},
        {"id": f"{n}8", "kind": "msisdn"},
        {"id": f"{n}9", "kind": "iccid"},
    ]
    return {
        "deviceIds": listed[:1] if devices == 1 else listed,
        "message": text,
        "timestamp": at.isoformat() if at else "not a time",
    }


def _commit(db: psycopg.Connection[Any], wires: list[dict[str, Any]]) -> None:
    page = models.HistoryPage(
        account_name=ACCOUNT,
        messages=tuple(models.SMSMessage.from_wire(w) for w in wires),
        has_more_data=False,
        status=200,
        next=None,
    )
    run_id = store.start_run(db, ACCOUNT)
    store.commit_block(db, run_id, page)
    store.finish_run(db, run_id, "succeeded", None)


def _stored(db: psycopg.Connection[Any], texts: list[str], at: str) -> None:
    """Pretend the messages were first stored at ``at`` (an SQL timestamptz expression); devices too."""
    for table in ("sms_message", "sms_message_device"):
        db.execute(f"UPDATE {table} SET first_stored_at = {at} WHERE message = ANY(%s)", [texts])


def _messages(db: psycopg.Connection[Any]) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT message FROM sms_history").fetchall()}


def _device_rows(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM sms_message_device").fetchone()
    assert row is not None
    return int(row[0])


def _cli(db_url: str, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = cli.main(["retention", *args], env={"SYNC_DATABASE_URL": db_url})
    out = capsys.readouterr().out
    assert code == 0, out
    [line] = out.strip().splitlines()  # the plan (and what was done) is the only thing on stdout
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture
def history(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Two old months stored long ago (one multi-device message), this month, undated messages old and new."""
    old = [f"old{i}" for i in range(20)]
    _commit(db, [_wire(t, OLD[i % 2], devices=1 + (i == 0)) for i, t in enumerate(old)])
    _commit(db, [_wire(f"now{i}", NOW - dt.timedelta(minutes=i)) for i in range(10)])
    _commit(db, [_wire(f"undated{i}", None) for i in range(5)])
    _stored(db, [*old, "undated0", "undated1"], f"now() - interval '{LONG_AGO}'")
    db.execute(
        f"UPDATE sync_run SET started_at = now() - interval '{LONG_AGO}'"
        " WHERE id IN (SELECT id FROM sync_run ORDER BY id LIMIT 2)"
    )
    return db


def test_dry_run_lists_exact_rows_and_removes_nothing(
    history: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retention` without --apply prints the plan with exact row counts per partition, changes nothing."""
    before = (_messages(history), _device_rows(history))
    planned = _cli(db_url, capsys, "--days", "365")
    assert {(p["partition"], p["rows"]) for p in planned["drop"]} == {
        ("sms_message_p202301", 10),
        ("sms_message_p202302", 10),
        ("sms_message_device_p202301", 1),
        ("sms_message_device_p202302", 0),
    }
    assert {p["partition"]: p["to"] for p in planned["drop"]}[
        "sms_message_p202301"
    ] == "2023-02-01T00:00:00+00:00"
    assert planned["delete"] == [
        {"partition": "sms_message_undated", "rows": 2},
        {"partition": "sms_message_device_undated", "rows": 0},
    ]
    assert (planned["dry_run"], planned["messages"], planned["runs"], planned["wait"]) == (True, 22, 2, [])
    assert (_messages(history), _device_rows(history)) == before


def test_apply_drops_old_months_and_keeps_everything_recent(
    history: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--apply drops the old months, deletes the old undated rows and old runs in batches; this month,
    the recent undated rows and each account's newest run stay."""
    done = _cli(db_url, capsys, "--days", "365", "--apply", "--batch", "1")
    assert (done["messages_removed"], done["runs_deleted"], done["busy"], done["kept"]) == (22, 2, [], [])
    assert len(done["dropped"]) == 4
    assert _messages(history) == {f"now{i}" for i in range(10)} | {f"undated{i}" for i in range(2, 5)}
    assert history.execute("SELECT to_regclass('sms_message_p202301')").fetchone() == (None,)
    assert history.execute("SELECT count(*) FROM sync_run").fetchone() == (1,)  # the newest run, for status


def test_messages_stamped_long_ago_but_stored_now_survive(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 item 3: messages stamped 1970, 2016 and last year, stored now, survive --days 30 --apply."""
    stamps = {
        "clock reset": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "clock 2016": dt.datetime(2016, 6, 15, 12, tzinfo=dt.UTC),
        "last year": NOW - dt.timedelta(days=365),
    }
    _commit(db, [_wire(text, at, devices=2) for text, at in stamps.items()])
    done = _cli(db_url, capsys, "--days", "30", "--apply")
    assert _messages(db) == set(stamps)
    assert _device_rows(db) == 3
    assert (done["dropped"], done["deleted"], done["messages_removed"]) == ([], [], 0)
    planned = _cli(db_url, capsys, "--days", "30")
    assert (planned["drop"], planned["delete"], planned["messages"]) == ([], [], 0)


def test_messages_stored_long_ago_with_old_timestamps_are_removed(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention still works: messages stamped 1970 / 2016 and stored longer ago than the window go
    (their partitions are dropped), and nothing else does."""
    _commit(db, [_wire("1970", dt.datetime(1970, 1, 1, tzinfo=dt.UTC), devices=2)])
    _commit(db, [_wire("2016", dt.datetime(2016, 6, 15, tzinfo=dt.UTC))])
    _commit(db, [_wire("today", NOW)])
    _stored(db, ["1970", "2016"], "now() - interval '31 days'")
    done = _cli(db_url, capsys, "--days", "30", "--apply")
    assert {d["partition"] for d in done["dropped"]} == {
        "sms_message_pbefore_2000",
        "sms_message_device_pbefore_2000",
        "sms_message_p201606",
        "sms_message_device_p201606",
    }
    assert done["messages_removed"] == 2
    assert _messages(db) == {"today"}
    assert _device_rows(db) == 0


def test_the_month_of_the_cutoff_is_kept_whole(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Boundary: the cutoff falls inside a month with rows before and after it, all stored long ago.
    That month is kept whole (nothing newer than the cutoff goes); the month before it is dropped."""
    days = 40
    cut = retention.cutoff(days)
    month = cut.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = (month + dt.timedelta(days=32)).replace(day=1)
    stamps = {
        "month before": month - dt.timedelta(days=3),
        "cutoff month, before the cutoff": month + (cut - month) / 2,
        "cutoff month, after the cutoff": cut + (month_end - cut) / 2,
        "after": NOW - dt.timedelta(minutes=1),
    }
    _commit(db, [_wire(text, at, devices=2) for text, at in stamps.items()])
    _stored(db, list(stamps), f"now() - interval '{LONG_AGO}'")
    done = _cli(db_url, capsys, "--days", str(days), "--apply")
    suffix = (month - dt.timedelta(days=3)).strftime("%Y%m")
    assert {d["partition"] for d in done["dropped"]} == {
        f"sms_message_p{suffix}",
        f"sms_message_device_p{suffix}",
    }
    assert _messages(db) == set(stamps) - {"month before"}
    assert _device_rows(db) == 3


def test_days_1_never_drops_the_current_month(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--days 1 keeps this month's partition, even when all its rows were stored long ago (its range has
    not ended; judging it by where the month starts would drop it)."""
    month = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    _commit(db, [_wire("first instant of the month", month, devices=2), _wire("just now", NOW)])
    _stored(db, ["first instant of the month", "just now"], f"now() - interval '{LONG_AGO}'")
    _cli(db_url, capsys, "--days", "1", "--apply")
    assert _messages(db) == {"first instant of the month", "just now"}
    assert _device_rows(db) == 1


def test_a_range_is_judged_by_its_end_whatever_the_date(db: psycopg.Connection[Any]) -> None:
    """The same as the --days 1 test at a fixed mid-month instant (it holds on the 1st of a month too):
    the month holding the cutoff is not dropped; the month before it is."""
    now = dt.datetime(2024, 5, 15, 12, tzinfo=dt.UTC)
    _commit(
        db,
        [
            _wire("may", dt.datetime(2024, 5, 2, tzinfo=dt.UTC)),
            _wire("april", dt.datetime(2024, 4, 30, tzinfo=dt.UTC)),
        ],
    )
    _stored(db, ["may", "april"], "'2024-05-03 00:00:00+00'")
    outcome = retention.run(db, 1, now=now)
    assert outcome is not None
    assert [name for name, _ in outcome[1].dropped] == ["sms_message_p202404", "sms_message_device_p202404"]
    assert _messages(db) == {"may"}


def test_a_month_with_late_deliveries_waits_then_goes(db: psycopg.Connection[Any]) -> None:
    """A month that ended before the cutoff but holds rows stored since waits (nothing of it is removed)
    while it ended less than two windows ago; once its late rows are old too, it is dropped."""
    _commit(
        db,
        [
            _wire("on time", dt.datetime(2024, 3, 5, tzinfo=dt.UTC)),
            _wire("late", dt.datetime(2024, 3, 31, tzinfo=dt.UTC)),
        ],
    )
    _stored(db, ["on time"], "'2024-03-05 00:00:00+00'")
    _stored(db, ["late"], "'2024-04-20 00:00:00+00'")
    waiting = retention.plan(db, 30, now=dt.datetime(2024, 5, 10, tzinfo=dt.UTC))  # cutoff 2024-04-10
    assert waiting.as_dict()["wait"] == [
        {
            "partition": "sms_message_p202403",
            "from": "2024-03-01T00:00:00+00:00",
            "to": "2024-04-01T00:00:00+00:00",
            "rows": 2,
            "stored_since_cutoff": 1,
        },
        {
            "partition": "sms_message_device_p202403",
            "from": "2024-03-01T00:00:00+00:00",
            "to": "2024-04-01T00:00:00+00:00",
            "rows": 0,
            "stored_since_cutoff": 0,
        },
    ]
    assert (waiting.drop, waiting.delete, waiting.messages) == ((), (), 0)
    retention.apply(db, waiting)
    assert _messages(db) == {"on time", "late"}
    later = retention.run(db, 30, now=dt.datetime(2024, 5, 25, tzinfo=dt.UTC))  # cutoff 2024-04-25
    assert later is not None
    assert later[1].messages_removed == 2
    assert _messages(db) == set()


def test_a_range_a_broken_clock_keeps_feeding_loses_only_its_old_rows(db: psycopg.Connection[Any]) -> None:
    """A range that ended more than two windows ago but still receives rows (a clock at 1970) is not
    waited for forever: its rows stored before the cutoff go in batches, with their devices; the rows
    stored since stay."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    _commit(db, [_wire(f"old{i}", epoch + dt.timedelta(hours=i), devices=2) for i in range(5)])
    _commit(db, [_wire("recent", epoch, devices=2)])
    _stored(db, [f"old{i}" for i in range(5)], "now() - interval '40 days'")
    outcome = retention.run(db, 30, batch=2)
    assert outcome is not None
    todo, done = outcome
    assert todo.as_dict()["delete"] == [
        {"partition": "sms_message_pbefore_2000", "rows": 5},
        {"partition": "sms_message_device_pbefore_2000", "rows": 5},
    ]
    assert done.as_dict()["deleted"] == todo.as_dict()["delete"]
    assert (done.dropped, done.messages_removed) == ((), 5)
    assert _messages(db) == {"recent"}
    assert _device_rows(db) == 1


def test_dry_run_counts_equal_what_apply_removes_on_never_analysed_partitions(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Partitions never analysed (reltuples -1: the old plan said 0 rows): the dry run's counts are
    exact, and --apply removes exactly them and reports the same numbers."""
    months = [dt.datetime(2022, m, 1, tzinfo=dt.UTC) for m in (3, 4)]
    for at in [*months, dt.datetime(1999, 1, 1, tzinfo=dt.UTC), None]:
        suffix = db.execute("SELECT sms_history_ensure_partition(%s)", [at]).fetchone()
        assert suffix is not None
        for parent in ("sms_message", "sms_message_device"):
            db.execute(f"ALTER TABLE {parent}_{'p' if at else ''}{suffix[0]} SET (autovacuum_enabled = off)")
    texts = []
    for k, month in enumerate(months):
        wires = [
            _wire(f"m{k}-{i}", month + dt.timedelta(minutes=i), devices=1 + (i % 7 == 0)) for i in range(600)
        ]
        _commit(db, wires)
        texts += [w["message"] for w in wires]
    old_clock = [
        _wire(f"c{i}", dt.datetime(1999, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)) for i in range(30)
    ]
    _commit(db, old_clock)
    _commit(db, [_wire(f"u{i}", None, devices=2) for i in range(40)])
    _commit(db, [_wire("u-recent", None), _wire("clock-recent", dt.datetime(1999, 2, 1, tzinfo=dt.UTC))])
    _stored(
        db,
        [*texts, *(w["message"] for w in old_clock), *(f"u{i}" for i in range(40))],
        "now() - interval '60 days'",
    )
    never = db.execute(
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'sms_message%p2022%' AND reltuples = -1"
    ).fetchone()
    assert never == (4,)  # the precondition of the report: never analysed

    planned = _cli(db_url, capsys, "--days", "30")
    rows = {p["partition"]: p["rows"] for p in planned["drop"]}
    assert rows["sms_message_p202203"] == rows["sms_message_p202204"] == 600
    assert rows["sms_message_device_p202203"] == 86
    assert {d["partition"]: d["rows"] for d in planned["delete"]} == {
        "sms_message_pbefore_2000": 30,
        "sms_message_device_pbefore_2000": 0,
        "sms_message_undated": 40,
        "sms_message_device_undated": 40,
    }
    assert planned["messages"] == 600 + 600 + 30 + 40
    before = (len(_messages(db)), _device_rows(db))

    done = _cli(db_url, capsys, "--days", "30", "--apply")
    assert [(d["partition"], d["rows"]) for d in done["dropped"]] == [
        (p["partition"], p["rows"]) for p in planned["drop"]
    ]
    assert done["deleted"] == planned["delete"]
    assert done["messages_removed"] == planned["messages"]
    assert {k: done[k] for k in ("drop", "delete", "wait", "messages", "runs")} == {
        k: planned[k] for k in ("drop", "delete", "wait", "messages", "runs")
    }
    after = (len(_messages(db)), _device_rows(db))
    assert before[0] - after[0] == planned["messages"]
    planned_devices = sum(
        p["rows"] for p in [*planned["drop"], *planned["delete"]] if "device" in p["partition"]
    )
    assert before[1] - after[1] == planned_devices
    assert _messages(db) == {"u-recent", "clock-recent"}


def test_a_row_stored_after_the_plan_keeps_its_partition(db: psycopg.Connection[Any]) -> None:
    """apply checks again under the lock: a message stored into a planned partition after the plan
    (a late device) keeps the partition and everything in it."""
    _commit(db, [_wire("old", dt.datetime(2016, 6, 1, tzinfo=dt.UTC))])
    _stored(db, ["old"], f"now() - interval '{LONG_AGO}'")
    todo = retention.plan(db, 30)
    assert [p.name for r in todo.drop for p in r.partitions] == [
        "sms_message_p201606",
        "sms_message_device_p201606",
    ]
    _commit(db, [_wire("arrived since", dt.datetime(2016, 6, 2, tzinfo=dt.UTC))])
    done = retention.apply(db, todo)
    assert (done.dropped, done.kept, done.messages_removed) == (
        (),
        ("sms_message_p201606", "sms_message_device_p201606"),
        0,
    )
    assert _messages(db) == {"old", "arrived since"}


def test_a_drop_gives_up_on_a_long_reader_and_leaves_the_range_for_the_next_run(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    """A long analyst query holds the history: the drop waits 5 s for its lock, then lists the range
    as busy and removes nothing of it; the next run drops it."""
    _commit(db, [_wire("old", dt.datetime(2016, 6, 1, tzinfo=dt.UTC))])
    _stored(db, ["old"], f"now() - interval '{LONG_AGO}'")
    with psycopg.connect(db_url) as analyst:
        analyst.execute("SELECT count(*) FROM sms_history").fetchone()  # its transaction stays open
        outcome = retention.run(db, 30)
    assert outcome is not None
    assert (outcome[1].dropped, outcome[1].busy) == (
        (),
        ("sms_message_p201606", "sms_message_device_p201606"),
    )
    assert _messages(db) == {"old"}
    again = retention.run(db, 30)
    assert again is not None and len(again[1].dropped) == 2
    assert _messages(db) == set()


def test_the_check_under_the_lock_reads_the_index_on_a_partition_never_analysed(
    db: psycopg.Connection[Any],
) -> None:
    """The drop's last check, made while the whole history waits, reads the first_stored_at index of a
    month never analysed (EXISTS was planned there as a sequential scan of the month)."""
    db.execute("SELECT sms_history_ensure_partition('2016-06-01')")
    db.execute("ALTER TABLE sms_message_p201606 SET (autovacuum_enabled = off)")
    db.execute(
        "INSERT INTO sms_message (received_at, first_stored_at, occurrence, device_count, account_name,"
        " message_key, message) SELECT '2016-06-01'::timestamptz + g * interval '1 second',"
        " now() - interval '100 days', 0, 1, 'a', sha256(g::text::bytea), 'x'"
        " FROM generate_series(1, 50000) g"
    )
    assert db.execute("SELECT reltuples FROM pg_class WHERE relname = 'sms_message_p201606'").fetchone() == (
        -1,
    )
    check = sql.SQL(queries.get("retention_stored_since")).format(
        partition=sql.Identifier("sms_message_p201606")
    )
    plan = "\n".join(
        str(r[0])
        for r in db.execute(sql.SQL("EXPLAIN ") + check, {"cutoff": retention.cutoff(30)}).fetchall()
    )
    assert "Index Only Scan Backward using sms_message_p201606_first_stored_at_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_one_retention_at_a_time(
    db: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another process applies retention, --apply removes nothing and says why (exit 1)."""
    _commit(db, [_wire("old", dt.datetime(2016, 6, 1, tzinfo=dt.UTC))])
    _stored(db, ["old"], f"now() - interval '{LONG_AGO}'")
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [retention.LOCK_NAMESPACE, retention.LOCK_KEY])
        assert retention.run(db, 30) is None
        code = cli.main(["retention", "--days", "30", "--apply"], env={"SYNC_DATABASE_URL": db_url})
    assert code == 1
    assert "another retention run is in progress" in capsys.readouterr().err
    assert _messages(db) == {"old"}


def test_the_daemons_daily_job_applies_retention_one_run_at_a_time(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    """The daemon's job removes nothing while another process holds the retention lock, then applies it."""
    _commit(
        db,
        [
            _wire("old", dt.datetime(2016, 6, 1, tzinfo=dt.UTC)),
            _wire("new", dt.datetime(2016, 6, 2, tzinfo=dt.UTC)),
        ],
    )
    _stored(db, ["old"], f"now() - interval '{LONG_AGO}'")
    _stored(db, ["new"], "now() - interval '1 day'")
    _commit(db, [_wire("gone", dt.datetime(2015, 6, 2, tzinfo=dt.UTC))])
    _stored(db, ["gone"], f"now() - interval '{LONG_AGO}'")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(db_url, autocommit=True)

    with connect() as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [retention.LOCK_NAMESPACE, retention.LOCK_KEY])
        scheduler._retention_job(connect=connect, days=30, stop=threading.Event())
        assert _messages(db) == {"old", "new", "gone"}
        # Released here, not by closing: the server ends a closed session's backend (and its
        # locks) a moment after the client has gone, and the next job could still find it held.
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [retention.LOCK_NAMESPACE, retention.LOCK_KEY])
    scheduler._retention_job(connect=connect, days=30, stop=threading.Event())
    # June 2015 is dropped; June 2016 holds a row stored a day ago: only its old row goes.
    assert _messages(db) == {"new"}
    assert db.execute("SELECT to_regclass('sms_message_p201506')").fetchone() == (None,)


def test_a_late_message_of_a_dropped_month_is_stored_again(history: psycopg.Connection[Any]) -> None:
    """A message dated in a month retention dropped recreates the partition: nothing handed over is lost."""
    retention.apply(history, retention.plan(history, 365))
    _commit(history, [_wire("old0", OLD[0])])
    row = history.execute(
        "SELECT tableoid::regclass::text FROM sms_message WHERE message = 'old0'"
    ).fetchone()
    assert row == ("sms_message_p202301",)


def test_nothing_is_planned_without_a_window(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without SYNC_RETENTION_DAYS or --days the command refuses instead of guessing a window."""
    code = cli.main(["retention"], env={"SYNC_DATABASE_URL": db_url})
    assert code != 0
    assert "SYNC_RETENTION_DAYS" in capsys.readouterr().err
