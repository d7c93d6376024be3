"""The chaos machine's pure parts: seeded schedules, their JSON, the envelope grammar, the shrinker."""

from __future__ import annotations

import datetime
import importlib
import json

from sync_worker import simulator
from tests.chaos import envelope, seeds, shrink, wallclock
from tests.chaos import schedule as sched


def test_a_seed_always_gives_the_same_schedule() -> None:
    """Replaying a seed regenerates its schedule event for event."""
    for seed in range(1, 60):
        assert seeds.generate(seed) == seeds.generate(seed)
    assert seeds.generate(1) != seeds.generate(2)


def test_a_schedule_survives_its_printed_json() -> None:
    """The JSON a failing seed prints reads back as the very same schedule."""
    for seed in range(1, 60):
        schedule = seeds.generate(seed)
        assert sched.Schedule.from_json(json.loads(schedule.dumps())) == schedule


def test_any_200_consecutive_seeds_hold_20_process_schedules() -> None:
    """The CI mode's share of real processes is fixed by the seeds themselves."""
    for first in (1, 17, 1000):
        modes = [seeds.generate(s).mode for s in range(first, first + 200)]
        assert modes.count("process") == 20


def test_process_schedules_time_nothing_on_commits() -> None:
    """Commit crash points exist only in-process: a real process is killed at requests."""
    for seed in range(9, 2000, 10):
        assert all(e.trigger[0] != "commit" for e in seeds.generate(seed).events)


def test_shrinking_keeps_only_the_events_that_break_the_promise() -> None:
    """Greedy delta debugging ends at the two events whose pair the predicate needs, in one pass."""
    events = tuple(
        sched.Event(p, "start", "inject", (("account", "a"), ("count", i)))
        for p, i in [(0, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]
    )
    original = sched.Schedule(1, "inproc", "on_delivery", "reusable", 10, ("a",), (0,), 4, events)

    def fails(candidate: sched.Schedule) -> bool:
        counts = {e.number("count") for e in candidate.events}
        return {3.0, 6.0} <= counts

    outcome = shrink.shrink(original, fails, seconds=30)
    assert sorted(e.number("count") for e in outcome.schedule.events) == [3.0, 6.0]
    assert fails(outcome.schedule)
    assert outcome.schedule.passes == 2


def test_every_envelope_form_changes_a_block_and_keeps_or_hides_its_messages() -> None:
    """Each grammar form yields other bytes; message bytes survive unless the body stops being JSON."""
    message = {"message": "m #1", "deviceIds": [{"id": "001", "kind": "imei"}]}
    body = simulator.wire.dumps({"hasMoreData": True, "messages": [message]})
    answer = simulator.Answer(202, body, (("Location", "/sms/a/history?next=ABC123"),))
    needle = simulator.wire.dumps(message)
    for form in envelope.FORMS:
        changed = envelope.apply(form, 7, answer)
        assert (changed.status, changed.body) != (answer.status, answer.body), form
        if form not in ("truncate", "empty_object", "not_object", "drop_messages"):
            assert needle in changed.body, form


def test_every_location_form_changes_the_header() -> None:
    """Each Location variant is another header value (or none at all)."""
    answer = simulator.Answer(202, b"{}", (("Location", "/sms/a/history?next=ABC123"),))
    for form in envelope.LOCATIONS:
        changed = envelope.location(form, 3, answer, "http://127.0.0.1:8080")
        assert changed.headers != answer.headers, form


def test_any_200_consecutive_seeds_hold_20_daemon_schedules_half_of_them_real_processes() -> None:
    """The CI mode drives the daemon in 20 of its 200 schedules: 10 real `run` processes, 10 in-process."""
    for first in (1, 17, 1000):
        modes = [sched.mode_of(s) for s in range(first, first + 200)]
        assert modes.count("daemon") == 10
        assert modes.count("daemon_inproc") == 10


def test_daemon_schedules_replay_from_their_seed_and_json() -> None:
    """A daemon schedule is regenerated from its seed and read back from its JSON exactly."""
    for seed in range(4, 400, 10):
        schedule = seeds.generate(seed)
        assert schedule.mode in sched.DAEMON_MODES
        assert schedule == seeds.generate(seed)
        assert sched.Schedule.from_json(json.loads(schedule.dumps())) == schedule


def test_daemon_schedules_cover_every_daemon_fault_and_steps_clocks_only_in_process() -> None:
    """Over the daemon seeds every kind of daemon event occurs; a wall-clock step only where the clock
    is injectable (in-process)."""
    seen: set[str] = set()
    for seed in range(4, 4000, 10):
        schedule = seeds.generate(seed)
        seen |= {e.action for e in schedule.events}
        if schedule.mode == "daemon":
            assert all(e.action != "clock_step" for e in schedule.events)
    wanted = {"db_readonly", "db_fail", "db_terminate", "db_restart", "clock_step", "sigterm"}
    assert wanted | {"replica_join", "replica_leave", "rotate", "inject"} <= seen


def test_every_module_whose_wall_clock_is_stepped_still_reads_it() -> None:
    """Each module ``wallclock`` steps still has a ``datetime`` name to replace (a module split that
    moves the wall-clock read elsewhere must move it here too, or every in-process daemon schedule errs)."""
    for name in wallclock.MODULES:
        module = importlib.import_module(name)
        assert hasattr(module, "datetime"), name
    with wallclock.injected():
        wallclock.step(3600)
        stepped = importlib.import_module("sync_worker.answers").datetime.datetime.now(datetime.UTC)
        assert stepped - datetime.datetime.now(datetime.UTC) > datetime.timedelta(minutes=59)
