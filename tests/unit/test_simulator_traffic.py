"""The simulator's seeded traffic: fixed for the tests by default; for `simulate` and the demo, relative
to their start (still deterministic), with the documented busy device and a few malformed messages."""

from __future__ import annotations

import collections
import datetime

import pytest

from sync_worker import errors, identity, models
from sync_worker.simulator import traffic

UNTIL = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _instant(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_default_traffic_stays_in_may_2024() -> None:
    """Without `until` the traffic is the fixed one every other test relies on (no busy device, no
    malformed message, from 2024-05-01T12:00Z on)."""
    messages = traffic.seed_messages(500, seed=3)
    assert messages == traffic.seed_messages(500, seed=3)
    assert all(m["timestamp"].startswith("2024-05-01") for m in messages[:50])
    assert traffic.BUSY_DEVICE not in [d for m in messages for d in m["deviceIds"]]


def test_relative_traffic_ends_just_before_until_and_is_deterministic() -> None:
    """With `until`, the same seed and instant give the same messages; the newest is a second before
    `until`, and a later `until` shifts every timestamp by the difference."""
    messages = traffic.seed_messages(1000, seed=1, until=UNTIL)
    assert messages == traffic.seed_messages(1000, seed=1, until=UNTIL)
    dated = [_instant(m["timestamp"]) for m in messages if isinstance(m.get("timestamp"), str)]
    assert max(dated) == UNTIL - 1
    assert UNTIL - 86_400 < min(dated) < UNTIL - 3_600  # about half a day of traffic: "the last day"
    later = traffic.seed_messages(1000, seed=1, until=UNTIL + 3600)
    later_dated = [_instant(m["timestamp"]) for m in later if isinstance(m.get("timestamp"), str)]
    assert [t + 3600 for t in dated] == later_dated


def test_relative_traffic_has_the_busy_device_and_some_malformed_messages() -> None:
    """About a fifth of the messages come from the device the analyst queries name, and one in
    MALFORMED_EVERY is malformed (the model flags it; nothing is dropped)."""
    messages = traffic.seed_messages(1500, seed=2, until=UNTIL)
    busy = sum(1 for m in messages if m.get("deviceIds") == [traffic.BUSY_DEVICE])
    assert 0.15 < busy / len(messages) < 0.25
    flagged = [m for m in messages if models.SMSMessage.from_wire(m).problems]
    assert len(flagged) == len(messages) // traffic.MALFORMED_EVERY


def test_relative_traffic_has_a_device_that_went_silent() -> None:
    """The silent device of analyst.sql's "devices that went silent" sends in the first third of the
    traffic only: with the default 1000 messages its last message is more than 6 hours before `until`."""
    messages = traffic.seed_messages(1000, seed=1, until=UNTIL)
    stamps = [
        _instant(m["timestamp"])
        for m in messages
        if m.get("deviceIds") == [traffic.SILENT_DEVICE] and isinstance(m.get("timestamp"), str)
    ]
    assert len(stamps) >= 5
    assert max(stamps) < UNTIL - 6 * 3600
    assert traffic.SILENT_DEVICE not in [
        d for m in traffic.seed_messages(500, seed=3) for d in m["deviceIds"]
    ]


def test_shaped_traffic_follows_its_knobs() -> None:
    """Each knob shows in the messages: ids per message (a line's ids, in order), scripts, timestamp
    forms (all strictly parsed), the malformed share; the same seed gives the same messages."""
    shape = traffic.Shape(
        ids_per_message=(1, 3),
        scripts=("cjk",),
        timestamp_forms=("nanos_z", "basic"),
        malformed_share=0.1,
        upper_kind_share=0.0,
    )
    messages = traffic.shaped_messages(2000, 4, shape, until=UNTIL)
    assert messages == traffic.shaped_messages(2000, 4, shape, until=UNTIL)
    flagged = [m for m in messages if models.SMSMessage.from_wire(m).problems]
    assert 0.07 < len(flagged) / len(messages) < 0.13
    good = [m for m in messages if not models.SMSMessage.from_wire(m).problems]
    counts = collections.Counter(len(m["deviceIds"]) for m in good)
    assert set(counts) == {1, 3} and 0.4 < counts[3] / len(good) < 0.6
    assert all(
        [d["kind"] for d in m["deviceIds"]] == ["imei", "msisdn", "iccid"][: len(m["deviceIds"])]
        for m in good
    )
    assert all(m["message"].rsplit(" #", 1)[0] in traffic.SCRIPTS["cjk"] for m in good)
    stamps = [m["timestamp"] for m in good]
    assert {len(s) for s in stamps} == {len("2024-05-01T12:00:00.123456789Z"), len("20240501T120000Z")}
    assert all(identity.parse_timestamp(s)[1] is None for s in stamps)
    parsed = [identity.parse_timestamp(s)[0] for s in stamps]
    assert max(p.timestamp() for p in parsed if p is not None) == UNTIL - 1


def test_named_shapes_and_knobs_parse() -> None:
    """`simulate --traffic` takes a shape's name, knobs, or a name then knobs; anything else is a
    validation error that names the problem."""
    assert traffic.parse_shape("three-ids").ids_per_message == (3,)
    mixed = traffic.parse_shape("mixed;malformed=0.5")
    assert mixed.malformed_share == 0.5 and mixed.scripts == traffic.SHAPES["mixed"].scripts
    knobs = traffic.parse_shape("ids=1,2;scripts=ascii;timestamps=space;upper=0")
    assert knobs == traffic.Shape(
        ids_per_message=(1, 2), scripts=("ascii",), timestamp_forms=("space",), upper_kind_share=0.0
    )
    for bad, says in (("nope", "unknown traffic shape"), ("ids=0", "ids per message"),
                      ("scripts=klingon", "scripts"), ("colour=red", "unknown traffic knob"),
                      ("malformed=lots", "malformed=lots")):  # fmt: skip
        with pytest.raises(errors.ValidationError, match=says):
            traffic.parse_shape(bad)


def test_mixed_shape_has_the_audits_share_of_multi_id_messages() -> None:
    """The "mixed" shape of the store's targets: about 38% of messages carry 2-3 ids, every script."""
    messages = traffic.seed_messages(4000, seed=9, shape=traffic.SHAPES["mixed"])
    lists = [m["deviceIds"] for m in messages if isinstance(m.get("deviceIds"), list) and m["deviceIds"]]
    share = sum(1 for ids in lists if len(ids) > 1) / len(lists)
    assert 0.32 < share < 0.44
    texts = {m["message"].rsplit(" #", 1)[0] for m in messages if isinstance(m.get("message"), str)}
    assert all(texts & set(traffic.SCRIPTS[s]) for s in ("ascii", "latin", "cjk", "emoji"))
