"""Push-mode schedules: the simulator pushes every message to the real callback receiver while faults hit
the push path, and polling (the safety net) drains what push could not deliver.

A push schedule is seeded like the others (``generate``; replay with ``--push-seed S``, or its JSON
with ``--schedule``), runs in-process (the real ``receiver.Receiver`` on a socket of its own, the
real ``app.sync_once`` for each poll, over HTTP to the simulator and a real Postgres behind a
cuttable proxy) and is checked with the same invariants, I1 counting pushed-with-2xx messages:

* schedule-wide: callbacks redelivered (``duplicate_rate``: the same body again after its 2xx),
  each batch reordered (``reorder``), attempts per callback before the platform gives up and puts
  the message back in the history queue (``attempts``, 1-3, ``RETRY_SECONDS`` apart);
* per fault pass, from its start: ``receiver_down`` (callbacks refused: retried, then back in the
  queue), ``bad_credentials`` (the listener registered with a password the receiver refuses: 401),
  ``lose_answers`` (2xx answers lost on the way back: retried although stored);
* at the pass's numbered steps (``at="step:N"``), in order: ``inject`` (new messages, pushed at
  once), ``poll`` (a polling pass while pushes are in flight), ``receiver_restart`` (stopped and
  started again while callbacks arrive), ``db_cut`` (the receiver's and the poller's connections cut
  mid-transaction), ``db_terminate`` (every backend ended), ``settle`` (wait until no callback is
  pending).

After each pass every callback in flight is settled and the pass's state undone; then, without
faults, up to ``invariants.DRAIN_PASSES`` polls must leave nothing queued (I3). I1: every message the
platform counts as acknowledged (polled) or pushed with a 2xx is in ``sms_history`` exactly once;
I4: a poll that exits 0 lost nothing it was handed; I2: no lockout.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import time
import traceback
from collections.abc import Sequence
from typing import Any, Final, Literal

import prometheus_client
import psycopg

from sync_worker import app, callback_metrics, config, errors, exitcodes, receiver, secret, simulator
from tests.chaos import execute as executemod
from tests.chaos import invariants, listener, pg
from tests.chaos import schedule as sched
from tests.chaos import world as worldmod
from tests.reliability import proxy

RETRY_SECONDS: Final = 0.05
SETTLE_SECONDS: Final = 30.0
STATE_ACTIONS: Final = ("receiver_down", "bad_credentials", "lose_answers")
STEP_ACTIONS: Final = ("inject", "poll", "receiver_restart", "db_cut", "db_terminate", "settle")
POLL_ENV: Final = {
    "THINGSPACE_CONNECT_TIMEOUT": "2",
    "THINGSPACE_READ_TIMEOUT": "2",
    "THINGSPACE_RETRY_MAX_WAIT": "0.2",
    "THINGSPACE_RETRY_MAX_RETRY_AFTER": "1",
    "SYNC_RUN_BUDGET_SECONDS": "30",
    "SYNC_CONCURRENCY": "1",
}


@dataclasses.dataclass(frozen=True, slots=True)
class PushSchedule:
    """A push-mode world: accounts in push mode, the platform's push behaviour, and fault passes."""

    seed: int
    block_size: int
    accounts: tuple[str, ...]
    initial: tuple[int, ...]  # queued before startCallbacks, then pushed
    duplicate_rate: float
    reorder: bool
    attempts: int
    passes: int
    events: tuple[sched.Event, ...]
    mode: Literal["push"] = "push"

    def without(self, drop: Sequence[int]) -> PushSchedule:
        return dataclasses.replace(self, events=sched.events_without(self.events, drop))

    def without_pass(self, number: int) -> PushSchedule:
        return dataclasses.replace(
            self, passes=self.passes - 1, events=sched.events_without_pass(self.events, number)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "block_size": self.block_size,
            "accounts": list(self.accounts),
            "initial": list(self.initial),
            "duplicate_rate": self.duplicate_rate,
            "reorder": self.reorder,
            "attempts": self.attempts,
            "passes": self.passes,
            "events": [e.as_json() for e in self.events],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PushSchedule:
        if obj.get("mode") != "push":
            raise ValueError(f"not a push schedule: mode {obj.get('mode')!r}")
        return cls(
            seed=int(obj["seed"]),
            block_size=int(obj["block_size"]),
            accounts=tuple(str(a) for a in obj["accounts"]),
            initial=tuple(int(n) for n in obj["initial"]),
            duplicate_rate=float(obj["duplicate_rate"]),
            reorder=bool(obj["reorder"]),
            attempts=int(obj["attempts"]),
            passes=int(obj["passes"]),
            events=tuple(sched.Event.from_json(e) for e in obj["events"]),
        )


def generate(seed: int) -> PushSchedule:
    """The push schedule of ``seed`` (pure). Seeds of push schedules are a series of their own."""
    rng = random.Random(f"push-{seed}")
    accounts = tuple(rng.sample(sched.ACCOUNT_POOL, rng.choice((1, 2, 2))))
    block = rng.choice((5, 10, 20))
    passes = rng.randint(2, 4)
    events: list[sched.Event] = []
    for p in range(passes):
        for action in STATE_ACTIONS:
            if rng.random() < 0.3:
                params: tuple[tuple[str, sched.Param], ...] = ()
                if action == "lose_answers":
                    params = (("count", rng.randint(1, 8)),)
                events.append(sched.Event(p, "start", action, params))
        steps = rng.randint(1, 6)
        for n in range(1, steps + 1):
            action = rng.choices(STEP_ACTIONS, weights=(6, 4, 2, 1, 1, 2))[0]
            params = ()
            if action == "inject":
                params = (("account", rng.choice(accounts)), ("count", rng.randint(1, 60)))
            events.append(sched.Event(p, f"step:{n}", action, params))
    events.sort(key=lambda e: (e.pass_no, e.trigger[0] != "start", e.trigger[1]))
    return PushSchedule(
        seed=seed,
        block_size=block,
        accounts=accounts,
        initial=tuple(rng.randrange(0, block * 4 + 1) for _ in accounts),
        duplicate_rate=rng.choice((0.0, 0.1, 0.3)),
        reorder=rng.random() < 0.6,
        attempts=rng.randint(1, 3),
        passes=passes,
        events=tuple(events),
    )


class PushWorld:
    """The simulator in push mode, the in-process receiver, the database behind a proxy."""

    def __init__(self, schedule: PushSchedule, dbs: pg.Databases) -> None:
        self.schedule = schedule
        self.dbs = dbs
        self.sim = simulator.Simulator(
            simulator.SimConfig(
                host="127.0.0.1",
                port=0,
                accounts=schedule.accounts,
                block_size=schedule.block_size,
                client_id=worldmod.CLIENT_ID,
                client_secret=secret.Secret(worldmod.CLIENT_SECRET),
                username=worldmod.USERNAME,
                password=secret.Secret(worldmod.PASSWORD),
                callback_retry_seconds=RETRY_SECONDS,
                callback_attempts=schedule.attempts,
                callback_timeout=5.0,
                callback_duplicate_rate=schedule.duplicate_rate,
                callback_reorder=schedule.reorder,
                callback_seed=schedule.seed,
            )
        )
        self.db_url = dbs.create()
        self.proxy = proxy.PgProxy(dbs.worker_url(self.db_url))
        self.sim.start()
        self.port = listener.free_port()
        self.env = {
            **self.sim.worker_env(accounts=schedule.accounts, database_url=self.proxy.conninfo()),
            **POLL_ENV,
            "SYNC_CALLBACK_HOST": "127.0.0.1",
            "SYNC_CALLBACK_PORT": str(self.port),
            "SYNC_CALLBACK_USERNAME": listener.LISTENER_USER,
            "SYNC_CALLBACK_PASSWORD": listener.LISTENER_PASSWORD,
        }
        self.settings = config.load(self.env)
        self.receiver: receiver.Receiver | None = None
        self.serial = dict.fromkeys(schedule.accounts, 0)
        self.injected = 0
        self.notes: list[str] = []
        self.records: list[worldmod.PassRecord] = []
        self._observer: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        self.stop_receiver()
        self.sim.stop()
        self.proxy.close()
        if self._observer is not None:
            self._observer.close()
        self.dbs.drop_later(self.db_url)

    def start_receiver(self) -> None:
        if self.receiver is None:
            metrics = callback_metrics.CallbackMetrics(prometheus_client.CollectorRegistry())
            self.receiver = app.callback_receiver(self.settings, app.connector(self.settings), metrics)
            self.receiver.start()

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def register(self, password: str) -> None:
        for account in self.schedule.accounts:
            listener.register_listener(self.sim, account, self.port, password)

    def inject(self, account: str, n: int) -> None:
        start = self.serial[account]
        self.sim.inject(account, worldmod.make_messages(account, start, n))
        self.serial[account] = start + n
        self.injected += n

    def settle(self) -> bool:
        return self.sim.push.wait_idle(SETTLE_SECONDS)

    def poll(self) -> tuple[int, tuple[str, ...]]:
        """One polling pass (``sync-worker once`` in this process): exit code and failed accounts."""
        try:
            with app.pooled(self.settings) as pool:
                result = app.sync_once(self.settings, connect=pool)
        except errors.SyncWorkerError as exc:
            return exitcodes.for_error(exc), self.schedule.accounts
        return result.exit_code, tuple(r.account for r in result.accounts if not r.ok)

    def keys(self, read: Any) -> collections.Counter[worldmod.Key]:
        found: collections.Counter[worldmod.Key] = collections.Counter()
        for account in self.schedule.accounts:
            for message in read(account):
                found[(account, str(message.get("message")))] += 1
        return found

    def rows(self) -> list[tuple[Any, ...]]:
        if self._observer is None or self._observer.closed:
            self._observer = psycopg.connect(self.db_url, autocommit=True, application_name=pg.OBSERVER)
        return self._observer.execute("SELECT account_name, raw_json, source FROM sms_history").fetchall()

    def stored(self) -> collections.Counter[worldmod.Key]:
        found: collections.Counter[worldmod.Key] = collections.Counter()
        for account, raw, _ in self.rows():
            found[(str(account), str(json.loads(raw).get("message")))] += 1
        return found


def run(schedule: PushSchedule, dbs: pg.Databases) -> executemod.Result:
    started = time.monotonic()
    world = PushWorld(schedule, dbs)
    violations: list[invariants.Violation] = []
    error: str | None = None
    acknowledged = 0
    try:
        for account, n in zip(schedule.accounts, schedule.initial, strict=True):
            world.inject(account, n)
        world.start_receiver()
        world.register(listener.LISTENER_PASSWORD)
        listener.start_callbacks(world.sim, schedule.accounts)
        for number in range(schedule.passes):
            violations += _fault_pass(world, number)
        drained, last = False, None
        for d in range(invariants.DRAIN_PASSES):
            world.settle()
            last = _poll(world, schedule.passes + d, "drain", violations)
            stored = world.stored()
            if (
                last == exitcodes.OK
                and world.settle()
                and all(stored[k] for k in world.keys(world.sim.queued))
            ):
                drained = True
                break
        violations += _final(world, drained, last)
        acknowledged = sum(world.keys(world.sim.acknowledged).values()) + sum(
            world.keys(world.sim.pushed).values()
        )
    except Exception:
        error = traceback.format_exc(limit=8)
    finally:
        world.close()
    return executemod.result(
        schedule.as_json(),
        world,
        started,
        violations=violations,
        acknowledged=acknowledged,
        platform_lost=0,
        error=error,
    )


def _fault_pass(world: PushWorld, number: int) -> list[invariants.Violation]:
    violations: list[invariants.Violation] = []
    events = [e for e in world.schedule.events if e.pass_no == number]
    for event in events:
        world.notes.append(f"pass {number} {event.at}: {event.action} {dict(event.params)}")
        if event.action == "receiver_down":
            world.stop_receiver()
        elif event.action == "bad_credentials":
            world.register("chaos-listener-stale-Pw-00000")
        elif event.action == "lose_answers":
            world.sim.push.lose_answers(int(event.number("count")))
        elif event.action == "inject":
            world.inject(event.text("account"), int(event.number("count")))
        elif event.action == "poll":
            _poll(world, number, "fault", violations)
        elif event.action == "receiver_restart":
            if world.receiver is not None:
                world.stop_receiver()
                world.start_receiver()
        elif event.action == "db_cut":
            world.proxy.cut()
            world.proxy.restore()
        elif event.action == "db_terminate":
            world.dbs.terminate_all(world.db_url)
        elif event.action == "settle":
            world.settle()
    # The pass's state undone: callbacks in flight settle first, so a refused one goes back to the queue.
    world.settle()
    world.start_receiver()
    world.register(listener.LISTENER_PASSWORD)
    return violations


def _poll(world: PushWorld, number: int, phase: str, violations: list[invariants.Violation]) -> int:
    before = world.keys(world.sim.acknowledged)
    code, failed = world.poll()
    record = worldmod.PassRecord(number=number, phase=phase, exit_code=code, failed=failed)
    world.records.append(record)
    if code == exitcodes.OK:
        stored = world.stored()
        new = world.keys(world.sim.acknowledged) - before
        lost = {k for k in new if stored[k] == 0}
        if lost:
            violations.append(
                invariants.Violation(
                    "I4-lost",
                    number,
                    f"poll exit 0, but {len(lost)} message(s) it acknowledged are not stored: "
                    f"{sorted(lost)[:3]}",
                )
            )
    return code


def _final(world: PushWorld, drained: bool, last: int | None) -> list[invariants.Violation]:
    out: list[invariants.Violation] = []
    stored = world.stored()
    polled = world.keys(world.sim.acknowledged)
    pushed = world.keys(world.sim.pushed)
    doubled, both_ways = invariants.split_doubles(stored, invariants.untimed_sources(world.rows()))
    if both_ways:
        world.notes.append(
            f"{len(both_ways)} timestamp-less message(s) arrived both ways (stored pushed and polled): "
            f"two rows each, by design (docs/schema.md, Pushed messages): {sorted(both_ways)[:3]}"
        )
    if doubled:
        out.append(
            invariants.Violation(
                "I1-doubled", None, f"{len(doubled)} message(s) stored more than once: {sorted(doubled)[:3]}"
            )
        )
    lost = {k for k in set(polled) | set(pushed) if stored[k] == 0}
    if lost:
        out.append(
            invariants.Violation(
                "I1-lost",
                None,
                f"{len(lost)} message(s) acknowledged or pushed with a 2xx are not in sms_history: "
                f"{sorted(lost)[:3]}",
            )
        )
    if not drained:
        waiting = sum(1 for k in world.keys(world.sim.queued) if not stored[k])
        out.append(
            invariants.Violation(
                "I3",
                None,
                f"not drained after {invariants.DRAIN_PASSES} polls without faults: last exit {last}, "
                f"{waiting} queued message(s) not stored, callbacks settled: {world.settle()}",
            )
        )
    peak = world.sim.peak_failed_login_streak()
    if peak >= invariants.LOCKOUT:
        out.append(invariants.Violation("I2", None, f"the vendor's failed logins in a row reached {peak}"))
    return out
