"""Daemon schedules: one seed gives a few seconds of ``sync-worker run`` under timed faults (pure).

A daemon schedule has one fault phase (pass 0) of a few seconds. Its events fire at a time in that
phase (``at="t:1.25"``, seconds after the first replica started) or, like a ``once`` schedule's, at
the n-th request of a kind (``"history:3"``). A timed event can last (``seconds``): a read-only
episode, a failing statement; everything ends with the phase at the latest. Then faults stop and the
daemon must heal by itself (``daemon``). Time is wall time here: a replay fires the same events at
the same offsets, not at the same request, which is as exact as a daemon can be replayed.

The events:

* ``db_readonly``: new sessions of the database read-only (``ALTER DATABASE``) and every backend
  ended, so the daemon's sessions are new, read-only ones (a failover seen from outside); undone after
  ``seconds``;
* ``db_fail``: every write to ``table`` fails (a trigger raising an error), for ``seconds``;
* ``db_terminate``: every backend of the database ended at once;
* ``db_restart``: the schedule's Postgres server restarted (the schedule gets a server of its job's
  own for it: the run's shared server serves the other job too);
* ``clock_step``: the wall clock steps ``seconds`` (forwards or backwards) and stays stepped; only
  in-process, where the wall clock the worker reads is injectable (``wallclock``);
* ``sigterm``: SIGTERM to replica 0 (it must exit 0 within a bound, nothing lost), then a new one
  starts (a rolling restart);
* ``replica_join`` / ``replica_leave``: a second replica starts (its own base URL spelling and user
  name case) / ends (``how``: SIGTERM, or SIGKILL for real processes: its claims must expire);
* ``rotate``: the platform's ``what`` (password or client secret) changes, and the replicas' secret
  file follows ``lag`` seconds later (sessions and bearer expire at once, so logins happen meanwhile);
* ``inject``: new messages queued; and API faults at requests, as in ``once`` schedules.
"""

from __future__ import annotations

import random
from typing import Final

from tests.chaos import schedule as sched

# Seconds of faults; the phase ends half a second after its last event (or episode) ended.
PHASE_SECONDS: Final = (2.5, 5.0)
CLOCK_STEPS: Final = (-86400, -3600, -600, -60, 60, 600, 3600)
FAIL_TABLES: Final = ("sync_schedule", "sms_history", "sync_run")
# API faults that fit a daemon: each request fault of a ``once`` schedule but crashes (the daemon's
# deaths are the replica events) and the slow ones (a daemon schedule lasts seconds).
API_ACTIONS: Final = (
    "status",
    "unauthorized",
    "expire_session",
    "reset_before",
    "reset_after",
    "unreadable",
    "envelope",
)


def generate(seed: int) -> sched.Schedule:  # noqa: PLR0912  # one branch per event
    """The daemon schedule of ``seed`` (its mode ``daemon`` or ``daemon_inproc``: ``schedule.mode_of``)."""
    rng = random.Random(seed)
    mode = sched.mode_of(seed)
    inproc = mode == "daemon_inproc"
    accounts = tuple(rng.sample(sched.ACCOUNT_POOL, rng.choice((1, 2, 3))))
    block = rng.choice((5, 10, 20))
    initial = tuple(rng.randrange(0, block * 4 + 1) for _ in accounts)
    length = round(rng.uniform(*PHASE_SECONDS), 2)
    events: list[sched.Event] = []
    joined = False
    for _ in range(rng.randint(1, 4)):
        at = round(rng.uniform(0.3, length), 2)
        roll = rng.random()
        if roll < 0.2:
            # In-process probes go stale after a second: an episode longer than the allowed lag
            # is one where /readyz must have said "not ready".
            seconds = round(rng.uniform(2.0, 4.5) if inproc else rng.uniform(1.0, 3.0), 2)
            events.append(sched.Event(0, f"t:{at}", "db_readonly", (("seconds", seconds),)))
        elif roll < 0.3:
            params: tuple[tuple[str, sched.Param], ...] = (
                ("seconds", round(rng.uniform(0.5, 2.5), 2)),
                ("table", rng.choice(FAIL_TABLES)),
            )
            events.append(sched.Event(0, f"t:{at}", "db_fail", params))
        elif roll < 0.37:
            events.append(sched.Event(0, f"t:{at}", "db_terminate"))
        elif roll < 0.42:
            events.append(sched.Event(0, f"t:{at}", "db_restart"))
        elif roll < 0.52 and inproc:
            events.append(sched.Event(0, f"t:{at}", "clock_step", (("seconds", rng.choice(CLOCK_STEPS)),)))
        elif roll < 0.62:
            events.append(sched.Event(0, f"t:{at}", "sigterm"))
        elif roll < 0.72:
            if not joined:
                joined = True
                params = (
                    ("base_url", rng.choice(sched.SPELLINGS)),
                    ("slash", rng.random() < 0.3),
                    ("username", rng.choice(sched.USERNAME_CASES)),
                )
                events.append(sched.Event(0, f"t:{at}", "replica_join", params))
                if rng.random() < 0.6:
                    leave = round(rng.uniform(at, length + 0.5), 2)
                    how = "sigterm" if inproc or rng.random() < 0.5 else "sigkill"
                    events.append(sched.Event(0, f"t:{leave}", "replica_leave", (("how", how),)))
            else:
                events.append(sched.Event(0, f"t:{at}", "db_terminate"))
        elif roll < 0.8:
            params = (
                ("lag", round(rng.uniform(0.0, 2.0), 2)),
                ("what", rng.choice(("password", "client_secret"))),
            )
            events.append(sched.Event(0, f"t:{at}", "rotate", params))
        elif roll < 0.88:
            account = rng.choice(accounts)
            events.append(
                sched.Event(0, f"t:{at}", "inject", (("account", account), ("count", rng.randint(1, 60))))
            )
        else:
            n = rng.randint(1, 4)
            action = rng.choice(API_ACTIONS)
            events.append(sched.Event(0, f"history:{n}", action, sched.api_params(rng, action)))
    events.sort(key=lambda e: (e.trigger[0] != "t", seconds_of(e), e.at))
    return sched.Schedule(
        seed=seed,
        mode=mode,
        final_ack=rng.choice(("on_delivery", "on_next_get")),
        token_mode=rng.choice(("reusable", "single_use")),
        block_size=block,
        accounts=accounts,
        initial=initial,
        passes=1,
        events=tuple(events),
    )


def seconds_of(event: sched.Event) -> float:
    """When a timed event fires (seconds into the fault phase); request-timed ones: 0."""
    kind, _, value = event.at.partition(":")
    return float(value) if kind == "t" else 0.0


def phase_seconds(schedule: sched.Schedule) -> float:
    """How long the fault phase lasts: until half a second after the last event or episode ended."""
    ends = [
        seconds_of(e) + (e.number("seconds") if e.action in ("db_readonly", "db_fail") else 0.0)
        for e in schedule.events
    ]
    ends += [seconds_of(e) + e.number("lag") for e in schedule.events if e.action == "rotate"]
    return max([PHASE_SECONDS[0], *ends]) + 0.5


def needs_own_server(schedule: sched.Schedule) -> bool:
    """Whether the schedule restarts its server (and so needs one its job does not share)."""
    return any(e.action == "db_restart" for e in schedule.events)
