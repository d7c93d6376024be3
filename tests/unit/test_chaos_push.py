"""The chaos machine's push-mode schedules and I1's rule for messages that arrive both ways."""

from __future__ import annotations

import collections
import json

from tests.chaos import invariants, push, shrink


def test_a_push_seed_always_gives_the_same_schedule_and_survives_its_json() -> None:
    """Replaying a push seed regenerates its schedule; its printed JSON reads back as the same one."""
    for seed in range(1, 60):
        schedule = push.generate(seed)
        assert schedule == push.generate(seed)
        assert push.PushSchedule.from_json(json.loads(schedule.dumps())) == schedule
    assert push.generate(1) != push.generate(2)


def test_push_schedules_use_every_push_fault() -> None:
    """Over 100 seeds every state and step action appears, and redeliveries and reordering are drawn."""
    schedules = [push.generate(s) for s in range(1, 101)]
    actions = {e.action for s in schedules for e in s.events}
    assert set(push.STATE_ACTIONS) | set(push.STEP_ACTIONS) <= actions
    assert any(s.duplicate_rate > 0 for s in schedules) and any(s.reorder for s in schedules)
    assert {s.attempts for s in schedules} == {1, 2, 3}


def test_a_push_schedule_shrinks_like_the_others() -> None:
    """The shrinker drops a push schedule's events down to the one the predicate needs."""
    original = push.generate(7)
    needed = next(i for i, e in enumerate(original.events) if e.action == "inject")
    kept_event = original.events[needed]
    outcome = shrink.shrink(original, lambda s: kept_event in s.events, seconds=10)
    assert outcome.schedule.events == (kept_event,)
    assert outcome.schedule.mode == "push"


def test_only_a_timestamp_less_message_stored_once_per_way_is_two_rows_by_design() -> None:
    """One pushed and one polled row of a message without a timestamp is the documented case; any other
    double (two pushed rows, two polled rows, or a message with a timestamp) still breaks I1."""
    a, b, c, d = (("acct", t) for t in ("a", "b", "c", "d"))
    stored = collections.Counter({a: 2, b: 2, c: 2, d: 1})
    rows = [
        ("acct", json.dumps({"message": "a"}), "push"),
        ("acct", json.dumps({"message": "a"}), "poll"),
        ("acct", json.dumps({"message": "b"}), "push"),
        ("acct", json.dumps({"message": "b"}), "push"),
        ("acct", json.dumps({"message": "c", "timestamp": "2024-01-01T00:00:00Z"}), "push"),
        ("acct", json.dumps({"message": "c", "timestamp": "2024-01-01T00:00:00Z"}), "poll"),
        ("acct", json.dumps({"message": "d"}), "poll"),
    ]
    doubled, both_ways = invariants.split_doubles(stored, invariants.untimed_sources(rows))
    assert both_ways == {a}
    assert doubled == {b, c}
