"""Property tests for message identity: stable under block reordering, distinct for distinct messages."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker import identity, models, rows
from tests.fixtures import rows_0012

# Small alphabets so that collisions (identical messages) are common, which is where keys go wrong.
_ids = st.sampled_from(["0001", "001", "1", "00012345678901", "A1"])
_kinds = st.sampled_from(["imei", "IMEI", "mdn", "iccid", "esn"])
_texts = st.sampled_from(
    ["hi", "Hi", "hi ", "", "\u05e9\u05dc\u05d5\u05dd", "\U0001f600", "a\x00b", "x\ud800"]
)
_stamps = st.sampled_from(
    [
        "2016-01-01T12:29:49-08:00",
        "2016-01-01T20:29:49Z",
        "2016-01-01T20:29:49.000Z",
        "2016-01-01T20:29:49",
        "2016-01-01T20:29:50+00:00",
        "not a time",
        "",
        # Sub-microsecond digits: distinct instants within one microsecond, and equal ones.
        "2016-01-01T20:29:49.1234561Z",
        "2016-01-01T20:29:49.1234562Z",
        "2016-01-01T12:29:49.12345610-08:00",
        "2016-01-01T20:29:49.123456Z",
        "2016-01-01T20:29:49.1234560Z",
        # Trailing garbage is no time (it used to parse as the clean one).
        "2016-01-01T20:29:49Z\x00junk",
        "2016-01-01x20:29:49Z",
    ]
)
# Members the model does not know (null ones and accountName do not count, see identity._identity_members).
_extra = st.sampled_from(
    [{}, {}, {"messageId": "m1"}, {"messageId": "m2"}, {"messageId": None}, {"accountName": "x"}]
)
_device_extra = st.sampled_from([{}, {}, {"slot": 1}])
well_formed = st.builds(
    lambda core, extra: {**core, **extra},
    st.fixed_dictionaries(
        {
            "deviceIds": st.lists(
                st.builds(lambda i, k, e: {"id": i, "kind": k, **e}, _ids, _kinds, _device_extra),
                min_size=1,
                max_size=3,
            ),
            "message": _texts,
            "timestamp": _stamps,
        }
    ),
    _extra,
)
malformed = st.one_of(
    st.fixed_dictionaries({"message": _texts}),
    st.fixed_dictionaries({"deviceIds": st.just([]), "message": _texts, "timestamp": _stamps}),
    st.fixed_dictionaries({"deviceIds": st.just("0001"), "message": _texts, "timestamp": _stamps}),
    st.fixed_dictionaries({"deviceIds": st.just([{"id": 1, "kind": "imei"}]), "message": st.integers(0, 2)}),
    st.integers(0, 3),
    st.none(),
    st.lists(_texts, max_size=2),
)
wire_message = st.one_of(well_formed, well_formed, malformed)
accounts = st.sampled_from(["0252012345-00001", "0252012345-00002", "acct"])


_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", re.ASCII)


def _instant(ts: str) -> str:
    """The oracle's reading of a timestamp: the exact UTC instant (nanoseconds and beyond) when the
    whole string is an ISO-8601 time, else the text itself."""
    match = _ISO.fullmatch(ts)
    if match is None:
        return "raw:" + ts
    whole = dt.datetime.fromisoformat(ts[:19] + (match.group(2) or "").replace("Z", "+00:00"))
    if whole.tzinfo is None:
        whole = whole.replace(tzinfo=dt.UTC)
    return f"utc:{whole.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S}.{(match.group(1) or '').ljust(18, '0')}"


def _canonical(account: str, obj: Any) -> str:
    """What identity is documented to depend on, computed independently of rows.py: the devices,
    the exact instant, the text and every other non-null member except accountName."""
    msg = models.SMSMessage.from_wire(obj)
    if msg.problems:
        return json.dumps(["raw", account, json.dumps(obj, sort_keys=True)])
    devices = sorted(
        (
            d["kind"].lower(),
            d["id"],
            json.dumps({k: v for k, v in d.items() if k not in ("id", "kind")}, sort_keys=True),
        )
        for d in obj["deviceIds"]
    )
    others = {k: v for k, v in obj.items() if k not in ("deviceIds", "message", "timestamp", "accountName")}
    others = {k: v for k, v in others.items() if v is not None}
    return json.dumps(
        [
            "ok",
            account,
            devices,
            _instant(msg.timestamp or ""),
            msg.message,
            json.dumps(others, sort_keys=True),
        ]
    )


def _keys(account: str, block: list[Any]) -> list[str]:
    return [r.message_key for r in rows.build_rows(account, [models.SMSMessage.from_wire(m) for m in block])]


@settings(max_examples=300)
@given(accounts, st.lists(wire_message, max_size=12), st.randoms(use_true_random=False))
def test_keys_are_stable_under_block_reordering(account: str, block: list[Any], rnd: Any) -> None:
    """A replayed block in any order maps onto exactly the same set of message keys."""
    shuffled = list(block)
    rnd.shuffle(shuffled)
    assert sorted(_keys(account, block)) == sorted(_keys(account, shuffled))


@settings(max_examples=300)
@given(accounts, st.lists(wire_message, max_size=12))
def test_every_message_of_a_block_gets_its_own_key(account: str, block: list[Any]) -> None:
    """No two messages of one block share a key, identical ones included (so none is dropped as a replay)."""
    keys = _keys(account, block)
    assert len(set(keys)) == len(keys) == len(block)


@settings(max_examples=500)
@given(accounts, accounts, wire_message, wire_message)
def test_distinct_messages_have_distinct_keys(acc_a: str, acc_b: str, a: Any, b: Any) -> None:
    """Two messages get the same key exactly when account, devices, instant and text agree."""
    key_a = identity.message_key(acc_a, models.SMSMessage.from_wire(a), 0)
    key_b = identity.message_key(acc_b, models.SMSMessage.from_wire(b), 0)
    assert (key_a == key_b) == (_canonical(acc_a, a) == _canonical(acc_b, b))


@settings(max_examples=200)
@given(accounts, wire_message)
def test_occurrence_numbers_give_distinct_keys(account: str, obj: Any) -> None:
    """The occurrence number is part of the key: copies 0, 1 and 2 of one message are three keys."""
    msg = models.SMSMessage.from_wire(obj)
    assert len({identity.message_key(account, msg, n) for n in range(3)}) == 3


@settings(max_examples=200)
@given(accounts, st.lists(wire_message, min_size=1, max_size=8))
def test_key_does_not_depend_on_block_neighbours(account: str, block: list[Any]) -> None:
    """A message's key (first occurrence) is the same alone or inside any block."""
    first = block[0]
    alone = _keys(account, [first])[0]
    assert alone in _keys(account, block)


def test_same_instant_in_other_offsets_is_the_same_message() -> None:
    """The timestamp is normalised to UTC, so one instant written two ways is one message (documented)."""
    base = {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "x"}
    a = models.SMSMessage.from_wire({**base, "timestamp": "2016-01-01T12:29:49-08:00"})
    b = models.SMSMessage.from_wire({**base, "timestamp": "2016-01-01T20:29:49.000Z"})
    assert identity.message_key("acct", a, 0) == identity.message_key("acct", b, 0)


def _refined(obj: Any) -> bool:
    """Whether the rules of migration 0013 give this message another key than the code before."""
    msg = models.SMSMessage.from_wire(obj)
    if msg.problems:
        return False
    stamp = msg.timestamp or ""
    long_fraction = re.search(r"\.\d{6}0*[1-9]", stamp) is not None
    junk = "\x00" in stamp or (len(stamp) > 10 and stamp[10] not in "T ")
    extras = any(
        v is not None for k, v in obj.items() if k not in ("deviceIds", "message", "timestamp", "accountName")
    )
    device_extras = any(len(d) > 2 for d in obj["deviceIds"])
    return long_fraction or junk or extras or device_extras


@settings(max_examples=500)
@given(accounts, st.lists(wire_message, max_size=8))
def test_keys_of_messages_the_new_rules_do_not_refine_are_unchanged(account: str, block: list[Any]) -> None:
    """A message with at most six fractional digits, a strict timestamp and no member beyond the
    model's gets, bit for bit, the key the code before migration 0013 gave it (a replay of a block
    stored then is absorbed, and 0013 leaves the row alone)."""
    plain = [m for m in block if not _refined(m)]
    messages = [models.SMSMessage.from_wire(m) for m in plain]
    assert [r.message_key for r in rows.build_rows(account, messages)] == [
        r.message_key for r in rows_0012.build_rows(account, messages)
    ]
