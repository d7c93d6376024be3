"""History store v2: the original of every message stays available exactly, stored or rebuilt."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import db as database
from sync_worker import models, rows, store, sync

# Text a message can carry: every code point Postgres text can hold (no NUL, no lone surrogate).
_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
_KINDS = st.sampled_from([*sorted(models.DEVICE_KINDS), "IMEI", "Msisdn"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=_TEXT, kind=_KINDS, text=_TEXT, stamp=_TEXT)
def test_sql_rebuild_is_the_workers_encoding(
    db: psycopg.Connection[Any], ident: str, kind: str, text: str, stamp: str
) -> None:
    """sms_history_rebuild_raw spells any fields exactly as the worker's JSON encoder (control characters,
    quotes, backslashes, DEL, non-ASCII and astral characters included)."""
    row = db.execute("SELECT sms_history_rebuild_raw(%s, %s, %s, %s)", (ident, kind, text, stamp)).fetchone()
    assert row is not None
    assert row[0] == rows.rebuild_raw(ident, kind, text, stamp)
    assert row[0] == json.dumps(
        {"deviceIds": [{"id": ident, "kind": kind}], "message": text, "timestamp": stamp},
        ensure_ascii=True,
        separators=(",", ":"),
    )


# A device item as a device may spell it: id first or kind first, now and then an extra member.
_DEVICE = st.one_of(
    st.fixed_dictionaries({"id": _TEXT, "kind": _KINDS}),
    st.fixed_dictionaries({"kind": _KINDS, "id": _TEXT}),
    st.fixed_dictionaries({"id": _TEXT, "kind": _KINDS, "slot": st.integers(0, 3)}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.tuples(_TEXT, _KINDS, _TEXT, _TEXT), others=st.lists(_DEVICE, min_size=1, max_size=3))
def test_sql_rebuild_of_several_devices_is_the_workers_encoding(
    db: psycopg.Connection[Any], fields: tuple[str, str, str, str], others: list[Any]
) -> None:
    """sms_history_rebuild_raw with raw_devices (the items after the first, as the worker encodes them)
    and message_json (the text already as a JSON literal) or without it gives the whole multi-device
    original exactly as the worker's JSON encoder spells it."""
    ident, kind, text, stamp = fields
    rest = "".join("," + json.dumps(o, ensure_ascii=True, separators=(",", ":")) for o in others)
    original = json.dumps(
        {"deviceIds": [{"id": ident, "kind": kind}, *others], "message": text, "timestamp": stamp},
        ensure_ascii=True,
        separators=(",", ":"),
    )
    assert rows.rebuild_raw(ident, kind, text, stamp, rest) == original
    for message_json in (None, json.dumps(text, ensure_ascii=True)):
        row = db.execute(
            "SELECT sms_history_rebuild_raw(%s, %s, %s, %s, %s, %s)",
            (ident, kind, text, stamp, rest, message_json),
        ).fetchone()
        assert row == (original,)


_WIRE = st.fixed_dictionaries(
    {
        "deviceIds": st.one_of(
            st.lists(st.fixed_dictionaries({"id": _TEXT, "kind": _KINDS}), min_size=0, max_size=3),
            st.lists(_DEVICE, min_size=1, max_size=4),
        ),
        "message": _TEXT,
        "timestamp": st.one_of(_TEXT, st.just("2024-05-01T12:00:00-08:00"), st.just("2031-02-03T04:05:06Z")),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.lists(_WIRE, min_size=1, max_size=6))
def test_every_stored_original_reads_back_byte_for_byte(
    db: psycopg.Connection[Any], block: list[Any]
) -> None:
    """Whatever a block holds (one device or several, in any spelling), sms_history.raw_json gives back
    each message's original exactly, whether the row kept it or the database rebuilt it from the fields
    and raw_devices."""
    account = "acct-raw"
    db.execute("DELETE FROM sms_message")
    db.execute("DELETE FROM sms_message_device")
    page = models.HistoryPage(
        account_name=account,
        messages=tuple(models.SMSMessage.from_wire(m) for m in block),
        has_more_data=False,
        status=200,
        next=None,
        request_next=None,
    )
    built = rows.build_rows(account, page.messages)
    run_id = store.start_run(db, account)
    store.commit_block(db, run_id, page)
    stored = dict(db.execute("SELECT message_key, raw_json FROM sms_history").fetchall())
    assert stored == {r.message_key: r.raw_json for r in built}
    rebuilt = db.execute("SELECT count(*) FROM sms_message WHERE raw_kept IS NULL").fetchone()
    assert rebuilt is not None and rebuilt[0] == sum(1 for r in built if r.raw_kept is None)
    # raw_kept stays NULL only where the rebuild gives back exactly what was received.
    for r in built:
        if r.raw_kept is None:
            assert r.device_id is not None and r.device_kind is not None
            assert r.message is not None and r.timestamp_raw is not None
            assert (
                rows.rebuild_raw(r.device_id, r.device_kind, r.message, r.timestamp_raw, r.raw_devices)
                == r.raw_json
            )
            # message_json only where the text is not plain printable ASCII, and then its JSON literal.
            plain = json.dumps(r.message, ensure_ascii=True) == f'"{r.message}"'
            assert r.message_json == (None if plain else json.dumps(r.message, ensure_ascii=True))
        else:
            assert r.message_json is None and r.raw_devices is None
    stored_json = db.execute("SELECT count(*) FROM sms_message WHERE message_json IS NOT NULL").fetchone()
    assert stored_json == (sum(1 for r in built if r.message_json is not None),)


def test_a_pass_creates_this_and_next_months_partitions(db: psycopg.Connection[Any], db_url: str) -> None:
    """A sync pass creates the current and the next month's partitions before any block needs them."""
    now = dt.datetime.now(dt.UTC)
    ahead = (now.replace(day=1) + dt.timedelta(days=32)).strftime("%Y%m")
    for name in (f"sms_message_p{ahead}", f"sms_message_device_p{ahead}"):
        db.execute(f"DROP TABLE IF EXISTS {name}")  # the template made it at migration time
    sync.run_accounts(
        _NoApi(),
        ["acct-none"],
        store.PostgresStore(database.connector(db_url)),
        concurrency=1,
        budget_seconds=1,
    )
    row = db.execute("SELECT to_regclass(%s) IS NOT NULL", (f"sms_message_p{ahead}",)).fetchone()
    assert row == (True,)


class _NoApi:
    """An API whose account fails at once: the pass still prepares the partitions first."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no API in this test")


def test_a_message_dated_in_a_new_month_creates_its_partition(db: psycopg.Connection[Any]) -> None:
    """A block holding a message of a month without partition creates it and stores the block once."""
    wire = {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "far", "timestamp": "2087-06-05T04:03:02Z"}
    page = models.HistoryPage(
        account_name="acct-far",
        messages=(models.SMSMessage.from_wire(wire),),
        has_more_data=False,
        status=200,
        next=None,
    )
    run_id = store.start_run(db, "acct-far")
    assert store.commit_block(db, run_id, page).inserted == 1
    assert store.commit_block(db, run_id, page).inserted == 0
    row = db.execute("SELECT tableoid::regclass::text FROM sms_message WHERE message = 'far'").fetchone()
    assert row == ("sms_message_p208706",)
