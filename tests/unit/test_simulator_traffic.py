"""The simulator's seeded traffic: fixed for the tests by default; for `simulate` and the demo, relative
to their start (still deterministic), with the documented busy device and a few malformed messages."""

from __future__ import annotations

import datetime

from sync_worker import models
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
