"""Retention: old months are dropped whole, old undated rows and runs go in batches, nothing recent moves."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog

from sync_worker import cli, logs, models, retention, store

ACCOUNT = "0252012345-00001"
NOW = dt.datetime.now(dt.UTC)
OLD = [dt.datetime(2023, 1, 15, tzinfo=dt.UTC), dt.datetime(2023, 2, 3, tzinfo=dt.UTC)]


def _wire(i: int, at: dt.datetime | None, devices: int = 1) -> dict[str, Any]:
    return {
        "deviceIds": [{"id": f"{i:015d}", "kind": "imei"}, {"id": f"{i}7", "kind": "mdn"}][:devices],
        "message": f"m{i}",
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


@pytest.fixture(autouse=True)
def _logging_left_usable() -> Iterator[None]:
    """The CLI points logging at this test's captured stream, which pytest closes afterwards: later
    tests (a daemon's threads) would die writing to it."""
    yield
    logs.configure("json", "INFO", io.StringIO())
    structlog.reset_defaults()


@pytest.fixture
def history(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Two old months (one multi-device message), this month, and undated messages old and new."""
    _commit(db, [_wire(i, OLD[i % 2], devices=1 + (i == 0)) for i in range(20)])
    _commit(db, [_wire(100 + i, NOW - dt.timedelta(hours=i)) for i in range(10)])
    _commit(db, [_wire(200 + i, None) for i in range(5)])
    # Two undated rows and the first two runs stored long ago.
    db.execute(
        "UPDATE sms_message_undated SET first_stored_at = now() - interval '800 days'"
        " WHERE message IN ('m200', 'm201')"
    )
    db.execute(
        "UPDATE sync_run SET started_at = now() - interval '800 days'"
        " WHERE id IN (SELECT id FROM sync_run ORDER BY id LIMIT 2)"
    )
    return db


def _counts(db: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM sms_history), (SELECT count(*) FROM sms_by_device),"
        " (SELECT count(*) FROM sync_run)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_dry_run_lists_old_months_and_removes_nothing(
    history: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retention` without --apply prints the plan (old partitions, undated rows, runs), changes nothing."""
    before = _counts(history)
    code = cli.main(["retention", "--days", "365"], env={"SYNC_DATABASE_URL": db_url})
    out = capsys.readouterr().out
    assert code == 0
    [line] = out.strip().splitlines()  # the plan is the only thing on stdout
    planned = json.loads(line)
    names = {p["name"] for p in planned["partitions"]}
    assert names == {
        "sms_message_p202301",
        "sms_message_p202302",
        "sms_message_device_p202301",
        "sms_message_device_p202302",
    }
    assert (planned["dry_run"], planned["undated_rows"], planned["runs"]) == (True, 2, 2)
    assert _counts(history) == before


def test_apply_drops_old_months_and_keeps_everything_recent(
    history: psycopg.Connection[Any], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--apply drops the old months' partitions, the old undated rows and the old runs in batches; this
    month, the recent undated rows and each account's newest run stay."""
    argv = ["retention", "--days", "365", "--apply", "--batch", "1"]
    code = cli.main(argv, env={"SYNC_DATABASE_URL": db_url})
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert (done["undated_deleted"], done["runs_deleted"], done["busy"]) == (2, 2, [])
    assert len(done["dropped"]) == 4
    messages = {r[0] for r in history.execute("SELECT message FROM sms_history").fetchall()}
    assert messages == {f"m{100 + i}" for i in range(10)} | {f"m{200 + i}" for i in range(2, 5)}
    assert history.execute("SELECT to_regclass('sms_message_p202301')").fetchone() == (None,)
    assert _counts(history)[2] == 1  # the newest run stays for status


def test_a_late_message_of_a_dropped_month_is_stored_again(history: psycopg.Connection[Any]) -> None:
    """A message dated in a month retention dropped recreates the partition: nothing handed over is lost."""
    retention.apply(history, retention.plan(history, retention.cutoff(365)))
    _commit(history, [_wire(0, OLD[0])])
    row = history.execute("SELECT tableoid::regclass::text FROM sms_message WHERE message = 'm0'").fetchone()
    assert row == ("sms_message_p202301",)


def test_nothing_is_planned_without_a_window(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without SYNC_RETENTION_DAYS or --days the command refuses instead of guessing a window."""
    code = cli.main(["retention"], env={"SYNC_DATABASE_URL": db_url})
    assert code != 0
    assert "SYNC_RETENTION_DAYS" in capsys.readouterr().err
