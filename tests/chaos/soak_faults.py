"""The soak's slow fault schedule (module ``soak``): the kinds of fault and their weights, each fired at
the simulator, the database or one process's database proxy, and the episodes some of them open (a
read-only database, a wrong listener password) ended when their time is up.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from typing import Any, Final

from sync_worker import simulator
from sync_worker.simulator import wire
from tests.chaos import listener, pg
from tests.reliability import proxy

# The slow schedule's faults and their weights.
FAULTS: Final = (
    ("status", 20),
    ("lost_response", 8),
    ("timeout", 6),
    ("unreadable", 6),
    ("trickle", 4),
    ("login_refused", 5),
    ("expire", 6),
    ("lose_answers", 10),
    ("bad_listener_password", 5),
    ("db_terminate", 2),
    ("db_cut", 2),
    ("db_readonly", 1),
)


class SlowFaults:
    """One soak's faults: ``fire`` one, ``end_episodes`` when their time is up; ``counts`` by kind and
    ``db_fault_times`` (the database faults' moments, for the final-block rule) for the report."""

    def __init__(
        self,
        sim: simulator.Simulator,
        *,
        dbs: pg.Databases,
        db_url: str,
        proxies: tuple[proxy.PgProxy, proxy.PgProxy],
        pushed: tuple[str, ...],
        register: Callable[[str, str], None],
        rng: random.Random,
    ) -> None:
        self.sim = sim
        self.dbs = dbs
        self.db_url = db_url
        self.proxies = proxies  # the daemon's and the receiver's
        self.pushed = pushed
        self.register = register  # (account, listener password)
        self.rng = rng  # the soak's own: one seed, one schedule
        self.counts: collections.Counter[str] = collections.Counter()
        self.db_fault_times: list[float] = []
        self.readonly_until: float | None = None
        self.listener_bad_until: float | None = None

    def pick(self) -> str:
        """The next fault's kind, by weight."""
        return self.rng.choices([f for f, _ in FAULTS], weights=[w for _, w in FAULTS])[0]

    def fire(self, kind: str) -> None:  # one branch per kind of fault
        """Fire one fault of the slow schedule."""
        faults, rng = self.sim.faults, self.rng
        if kind == "login_refused" and (faults.pending("login") or faults.pending("token")):
            # Logins are rare (sessions last): refusals queued while none happens would all meet the
            # next burst of logins (a session expiry, every account at once), and three unknown
            # outcomes in a row trip the login guard, as they must. One refusal waits at a time.
            return
        self.counts[kind] += 1
        if kind == "status":
            status = rng.choice((500, 502, 503, 504, 429, 408))
            retry_after = rng.choice((None, "1", "0", "3", "garbage", "86400", "-5"))
            headers = (("Retry-After", retry_after),) if retry_after is not None else ()
            body = wire.m2m_error(wire.CODE_UNEXPECTED, "soak")
            faults.script("history", [simulator.Raw(status, body, (*wire.JSON_HEADERS, *headers))])
        elif kind in ("lost_response", "timeout"):
            faults.script("history", [kind])
        elif kind == "unreadable":
            faults.script("history", [simulator.Mangle(rng.choice(("cut_short", "not_json", "empty_200")))])
        elif kind == "trickle":
            faults.script("history", [simulator.Trickle(512, 0.01)])
        elif kind == "login_refused":
            which = rng.choice(("login", "token"))
            step: Any = rng.choice((503, 429, simulator.gateway_error_after_processing(504)))
            faults.script(which, [step])
        elif kind == "expire":
            faults.script("history", [rng.choice(("expire_session", "expire_bearer"))])
        elif kind == "lose_answers":
            self.sim.push.lose_answers(rng.randint(1, 5))
        elif kind == "bad_listener_password":
            # Callbacks carry a password the receiver refuses (401) until it is registered again.
            account = rng.choice(self.pushed)
            self.register(account, "soak-listener-stale-Pw-000000")
            self.listener_bad_until = time.monotonic() + rng.uniform(3, 10)
        elif kind == "db_terminate":
            self.db_fault_times.append(time.monotonic())
            self.dbs.terminate_all(self.db_url)
        elif kind == "db_cut":
            self.db_fault_times.append(time.monotonic())
            target = rng.choice(self.proxies)
            target.cut()
            target.restore()
        elif kind == "db_readonly":
            self.db_fault_times.append(time.monotonic())
            self.dbs.read_only(self.db_url, True)
            self.dbs.terminate_all(self.db_url)
            self.readonly_until = time.monotonic() + rng.uniform(3, 8)

    def end_episodes(self, now: float) -> None:
        """End the episodes (read-only, wrong listener password) whose time is up at ``now``."""
        if self.readonly_until is not None and now >= self.readonly_until:
            self.dbs.read_only(self.db_url, False)
            self.db_fault_times.append(time.monotonic())
            self.readonly_until = None
        if self.listener_bad_until is not None and now >= self.listener_bad_until:
            for account in self.pushed:
                self.register(account, listener.LISTENER_PASSWORD)
            self.listener_bad_until = None
