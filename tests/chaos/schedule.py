"""Seeded fault schedules: one seed gives one schedule, a list of timed events, the same every time.

A schedule is data, not code, so that a failing one can be printed as JSON, read back, replayed
exactly and shrunk by dropping events. Time is logical, not wall-clock: an event fires at the start
of a fault pass (``at="start"``) or when the pass's n-th request of a kind reaches the simulator
(``"history:3"``, ``"login:1"``, ``"token:1"``) or, in-process only, at its n-th block commit
(``"commit:2"``). Logical time is what makes a replay hit the same block, login or commit again.

Every ``seed % 10 == 9`` schedule runs as real ``sync-worker once`` processes; every
``seed % 10 == 4`` drives the daemon (``daemon_schedule``): ``seed % 20 == 4`` as real
``sync-worker run`` processes, ``seed % 20 == 14`` in-process; the others run ``once`` in-process. So
any 200 consecutive seeds hold exactly 20 of the process kind and 20 daemon schedules (10 of each).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from tests.chaos import envelope

Mode = Literal["inproc", "process", "daemon", "daemon_inproc"]
MODES: Final = ("inproc", "process", "daemon", "daemon_inproc")
DAEMON_MODES: Final = ("daemon", "daemon_inproc")
Param = str | int | float | bool | None

ACCOUNT_POOL: Final = ("0252012345-00001", "0000000007-00002", "4200000000-00003")
SPELLINGS: Final = ("127.0.0.1", "localhost", "LOCALHOST")
USERNAME_CASES: Final = ("as_is", "upper", "title")
STATUSES: Final = (500, 502, 503, 504, 429, 408)
# Retry-After as the platform (or a proxy in front of it) might send it.
RETRY_AFTER_FORMS: Final = ("none", "seconds", "zero", "date", "date_past", "garbage", "huge", "negative")
UNREADABLE: Final = ("cut_short", "not_json", "wrong_envelope", "empty_200", "bare_202")
OPERATOR_COMMANDS: Final = (
    "cursor_reset",
    "accounts_forget",
    "retention_apply",
    "quarantine_replay",
    "auth_reset",
)
API_KINDS: Final = ("history", "login", "token")

# Actions fired by a request of a kind (the simulator's drop hook sees it first).
API_ACTIONS: Final = (
    "status",
    "unauthorized",
    "expire_session",
    "expire_bearer",
    "reset_before",
    "reset_after",
    "gateway_after",
    "timeout",
    "slow",
    "trickle",
    "unreadable",
    "envelope",
    "location",
)
CRASH_POINTS: Final = ("before_request", "after_processing", "before_commit", "after_commit")


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One thing that happens to the worker's world at one logical moment of one fault pass."""

    pass_no: int
    at: str
    action: str
    params: tuple[tuple[str, Param], ...] = ()

    def __post_init__(self) -> None:
        # One order for the parameters, so a schedule read back from JSON compares equal.
        object.__setattr__(self, "params", tuple(sorted(self.params)))

    def get(self, name: str, default: Param = None) -> Param:
        return dict(self.params).get(name, default)

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise ValueError(f"event {self.action} has no text parameter {name!r}")
        return value

    def number(self, name: str) -> float:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"event {self.action} has no numeric parameter {name!r}")
        return float(value)

    @property
    def trigger(self) -> tuple[str, int]:
        """(``"start"``, 0), (``"t"``, 0) for a daemon's timed event, or (request kind or ``"commit"``, n)."""
        if self.at == "start":
            return "start", 0
        if self.at.startswith("t:"):
            return "t", 0
        kind, _, n = self.at.partition(":")
        return kind, int(n)

    def as_json(self) -> dict[str, Any]:
        return {"pass": self.pass_no, "at": self.at, "do": self.action, **dict(self.params)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        params = tuple(sorted((k, v) for k, v in obj.items() if k not in ("pass", "at", "do")))
        return cls(int(obj["pass"]), str(obj["at"]), str(obj["do"]), params)


def events_without(events: tuple[Event, ...], drop: Sequence[int]) -> tuple[Event, ...]:
    """``events`` minus those at the indexes in ``drop`` (how a shrink tries a smaller schedule)."""
    gone = set(drop)
    return tuple(e for i, e in enumerate(events) if i not in gone)


def events_without_pass(events: tuple[Event, ...], number: int) -> tuple[Event, ...]:
    """``events`` minus those of fault pass ``number``; the later passes' events move up one."""
    return tuple(
        dataclasses.replace(e, pass_no=e.pass_no - (e.pass_no > number))
        for e in events
        if e.pass_no != number
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """The whole world of one run: simulator behaviour, traffic, fault passes and their events."""

    seed: int
    mode: Mode
    final_ack: str
    token_mode: str
    block_size: int
    accounts: tuple[str, ...]
    initial: tuple[int, ...]  # messages queued per account before the first pass
    passes: int
    events: tuple[Event, ...]

    def without(self, drop: Sequence[int]) -> Schedule:
        """This schedule minus the events at the indexes in ``drop``."""
        return dataclasses.replace(self, events=events_without(self.events, drop))

    def without_pass(self, number: int) -> Schedule:
        """This schedule minus fault pass ``number`` and its events (later passes move up one)."""
        return dataclasses.replace(
            self, passes=self.passes - 1, events=events_without_pass(self.events, number)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "final_ack": self.final_ack,
            "token_mode": self.token_mode,
            "block_size": self.block_size,
            "accounts": list(self.accounts),
            "initial": list(self.initial),
            "passes": self.passes,
            "events": [e.as_json() for e in self.events],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Schedule:
        mode = obj["mode"]
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        return cls(
            seed=int(obj["seed"]),
            mode=mode,
            final_ack=str(obj["final_ack"]),
            token_mode=str(obj["token_mode"]),
            block_size=int(obj["block_size"]),
            accounts=tuple(str(a) for a in obj["accounts"]),
            initial=tuple(int(n) for n in obj["initial"]),
            passes=int(obj["passes"]),
            events=tuple(Event.from_json(e) for e in obj["events"]),
        )


def mode_of(seed: int) -> Mode:
    if seed % 10 == 9:
        return "process"
    if seed % 20 == 4:
        return "daemon"
    if seed % 20 == 14:
        return "daemon_inproc"
    return "inproc"


def generate(seed: int) -> Schedule:
    """The ``once`` schedule of ``seed`` (pure: the same seed always gives the same schedule)."""
    rng = random.Random(seed)
    mode = mode_of(seed)
    if mode in DAEMON_MODES:
        raise ValueError(f"seed {seed} drives the daemon: seeds.generate, daemon_schedule.generate")
    process = mode == "process"
    accounts = tuple(rng.sample(ACCOUNT_POOL, rng.choice((1, 2) if process else (1, 2, 2, 3))))
    block = rng.choice((5, 10, 20, 50))
    initial = tuple(rng.randrange(0, block * 6 + 1) for _ in accounts)
    passes = rng.randint(2, 3) if process else rng.randint(2, 5)
    # Requests a pass makes per account, about: one per block plus the final one.
    per_pass = max(2, sum(initial) // block // max(1, passes - 1) + 2)
    events: list[Event] = []
    events += _process_events(rng, passes)
    for _ in range(rng.randint(1, 6) if process else rng.randint(1, 12)):
        events.append(_random_event(rng, mode, passes, accounts, per_pass))
    events.sort(key=lambda e: (e.pass_no, e.trigger[0] != "start", e.at))
    return Schedule(
        seed=seed,
        mode=mode,
        final_ack=rng.choice(("on_delivery", "on_next_get")),
        token_mode=rng.choice(("reusable", "single_use")),
        block_size=block,
        accounts=accounts,
        initial=initial,
        passes=passes,
        events=tuple(events),
    )


def _process_events(rng: random.Random, passes: int) -> list[Event]:
    """Per process: a base URL spelling, a user name case, and a run of passes with a stale password
    (a rotated secret one replica has not got yet)."""
    wrong: set[int] = set()
    if rng.random() < 0.35:
        first = rng.randrange(passes)
        wrong = set(range(first, rng.randint(first, passes - 1) + 1))
    out = []
    for p in range(passes):
        if p not in wrong and rng.random() < 0.5:
            continue
        out.append(
            Event(
                p,
                "start",
                "process",
                (
                    ("base_url", rng.choice(SPELLINGS)),
                    ("password", "wrong" if p in wrong else "right"),
                    ("slash", rng.random() < 0.3),
                    ("username", rng.choice(USERNAME_CASES)),
                ),
            )
        )
    return out


def _random_event(  # one branch per kind of event
    rng: random.Random, mode: Mode, passes: int, accounts: tuple[str, ...], per_pass: int
) -> Event:
    p = rng.randrange(passes)
    roll = rng.random()
    if roll < 0.55:
        kind = rng.choices(API_KINDS, weights=(8, 3, 1))[0]
        n = rng.randint(1, per_pass) if kind == "history" else rng.randint(1, 2)
        at = f"{kind}:{n}"
        action = rng.choice(API_ACTIONS if kind == "history" else API_ACTIONS[:9])
        return Event(p, at, action, api_params(rng, action))
    if roll < 0.68:
        if mode == "inproc" and rng.random() < 0.4:
            point = rng.choice(("before_commit", "after_commit"))
            return Event(p, f"commit:{rng.randint(1, per_pass)}", "crash", (("point", point),))
        kind = rng.choices(("history", "login"), weights=(5, 1))[0]
        n = rng.randint(1, per_pass) if kind == "history" else 1
        return Event(p, f"{kind}:{n}", "crash", (("point", rng.choice(CRASH_POINTS[:2])),))
    if roll < 0.78:
        action = rng.choice(("db_cut", "db_terminate", "db_readonly"))
        if mode == "inproc" and action == "db_cut" and rng.random() < 0.5:
            return Event(p, f"commit:{rng.randint(1, per_pass)}", action)
        return Event(p, _history_or_start(rng, per_pass), action)
    if roll < 0.9:
        command = rng.choice(OPERATOR_COMMANDS)
        params: tuple[tuple[str, Param], ...] = (("command", command), ("account", rng.choice(accounts)))
        if command == "retention_apply":
            params += (("days", rng.choice((1, 30, 400))),)
        return Event(p, _history_or_start(rng, per_pass), "operator", params)
    return Event(
        p,
        _history_or_start(rng, per_pass),
        "inject",
        (("account", rng.choice(accounts)), ("count", rng.randint(1, 120))),
    )


def _history_or_start(rng: random.Random, per_pass: int) -> str:
    return "start" if rng.random() < 0.5 else f"history:{rng.randint(1, per_pass)}"


def api_params(rng: random.Random, action: str) -> tuple[tuple[str, Param], ...]:
    if action == "status":
        return (("status", rng.choice(STATUSES)), ("retry_after", rng.choice(RETRY_AFTER_FORMS)))
    if action == "slow":
        return (("seconds", round(rng.uniform(0.01, 0.12), 3)),)
    if action == "trickle":
        return (("chunk", rng.choice((16, 64, 256))), ("gap", round(rng.uniform(0.005, 0.03), 3)))
    if action == "unreadable":
        return (("kind", rng.choice(UNREADABLE)),)
    if action == "envelope":
        return (("form", rng.choice(envelope.FORMS)), ("variant", rng.randrange(1000)))
    if action == "location":
        return (("form", rng.choice(envelope.LOCATIONS)), ("variant", rng.randrange(1000)))
    return ()
