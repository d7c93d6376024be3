"""One schedule's world: the simulator, the database behind a cuttable proxy, and the events firing.

Both ways of running a schedule (in-process passes, real processes) share this. The simulator's
``drop`` hook sees every request first: it counts them per pass and kind and fires the events timed
on them (scripted faults for that very request, a crash, a database fault, an operator command, new
traffic). The ``rewrite`` hook applies the envelope and ``Location`` grammar. The ``final_block``
hook records every final block the platform handed out, so that a loss no client could prevent (the
platform dequeued a final block on delivery and the worker died before committing it) is told apart
from a broken promise.

The world also answers the invariants' questions: what the platform counts as acknowledged, what
is still queued, what the database holds, what the quarantine kept.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg
import requests

from sync_worker import secret, simulator
from sync_worker.simulator import wire
from tests.chaos import envelope, pg
from tests.chaos import schedule as sched
from tests.reliability import proxy

USERNAME: Final = "chaos-user"
PASSWORD: Final = "chaos-Pw-'\";--"
STALE_PASSWORD: Final = "chaos-Pw-rotated-away"
CLIENT_ID: Final = "chaos-client"
CLIENT_SECRET: Final = "chaos-Secret-$(x)&y=1"
# Timestamps as devices send them, including ones retention would call old.
_STAMPS: Final = (
    "2016-01-01T12:29:49-08:00",
    "1970-01-01T00:00:00Z",
    "2024-05-17T08:01:02.123Z",
    None,
    "2099-12-31T23:59:59+14:00",
)
_OPERATOR_ARGV: Final[Mapping[str, Callable[[str, int], list[str]]]] = {
    "cursor_reset": lambda a, _d: ["cursor", "reset", "--account", a, "--yes"],
    "accounts_forget": lambda a, _d: ["accounts", "forget", "--account", a, "--even-if-configured", "--yes"],
    "retention_apply": lambda _a, d: ["retention", "--days", str(d), "--apply"],
    "quarantine_replay": lambda _a, _d: ["quarantine", "replay"],
    "auth_reset": lambda _a, _d: ["auth", "reset", "--yes"],
}

Key = tuple[str, str]  # (account, message text): every generated text is unique
Operator = Callable[[list[str], dict[str, str]], int]


class Crash(BaseException):  # a process death, not an error anything may catch
    """The in-process worker died at a named crash point; like a SIGKILL, nothing may handle it.

    A ``BaseException`` so that the worker's own ``except Exception`` (which turns a bug into a
    failed run) does not swallow it.
    """


@dataclasses.dataclass
class PassRecord:
    """What one pass did, as the invariants need it."""

    number: int
    phase: str  # "fault" or "drain"
    exit_code: int | None  # None: the worker died (crash point or SIGKILL)
    failed: tuple[str, ...] = ()  # accounts whose run did not end ok
    quarantined_before: int = 0
    quarantined_after: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def crashed(self) -> bool:
        return self.exit_code is None


def make_messages(account: str, start: int, n: int) -> list[dict[str, Any]]:
    """Distinct messages (a serial in the text), deterministic, with hostile timestamps."""
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        message: dict[str, Any] = {
            "deviceIds": [
                {"id": f"00{(i * 7919) % 10**13:013d}", "kind": ("imei", "iccid", "MSISDN")[i % 3]}
            ],
            "message": f"{account} #{i} t={i % 97} \u00e9",
        }
        stamp = _STAMPS[i % len(_STAMPS)]
        if stamp is not None:
            message["timestamp"] = stamp
        out.append(message)
    return out


class World:
    """The simulator and database of one schedule, and the events of its fault passes."""

    def __init__(
        self,
        schedule: sched.Schedule,
        dbs: pg.Databases,
        *,
        timeout_seconds: float,
        operator: Operator,
        own_server: bool = False,
    ) -> None:
        self.schedule = schedule
        self.dbs = dbs
        self.operator = operator
        config = simulator.SimConfig(
            host="127.0.0.1",
            port=0,
            accounts=schedule.accounts,
            block_size=schedule.block_size,
            final_ack=schedule.final_ack,  # type: ignore[arg-type]
            token_mode=schedule.token_mode,  # type: ignore[arg-type]
            client_id=CLIENT_ID,
            client_secret=secret.Secret(CLIENT_SECRET),
            username=USERNAME,
            password=secret.Secret(PASSWORD),
        )
        self.sim = simulator.Simulator(config)
        self.sim.faults.timeout_seconds = timeout_seconds
        self.sim.hooks.drop = self._drop
        self.sim.hooks.rewrite = self._rewrite
        self.sim.hooks.final_block = self._final_block
        # A schedule that restarts its server gets one its job does not share (``pg``).
        self.db_url = dbs.create_on_own_server() if own_server else dbs.create()
        self.proxy = proxy.PgProxy(dbs.worker_url(self.db_url))
        self._observer: psycopg.Connection[Any] | None = None
        self.sim.start()
        self.origin = f"http://127.0.0.1:{self.sim.port}"
        self._lock = threading.Lock()
        self._local = threading.local()
        self._triggers: dict[tuple[int, str, int], list[sched.Event]] = collections.defaultdict(list)
        for event in schedule.events:
            kind, n = event.trigger
            self._triggers[(event.pass_no, kind, n)].append(event)
        self.pass_no = -1
        self.fault = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.crashed = threading.Event()
        # Process mode: SIGKILLs the running worker.
        self.kill: Callable[[], None] | None = None
        self.read_only = False
        self.serial = dict.fromkeys(schedule.accounts, 0)
        self.injected = 0
        self.final_deliveries: list[tuple[int, str, list[Any]]] = []
        self.records: list[PassRecord] = []
        self.notes: list[str] = []
        # Stored messages an operator command removed, and which one (stored minutes ago: I1).
        self.removed: dict[Key, str] = {}
        for account, n in zip(schedule.accounts, schedule.initial, strict=True):
            self.inject(account, n)

    def close(self) -> None:
        self.sim.hooks.drop = self.sim.hooks.rewrite = self.sim.hooks.final_block = None
        self.sim.stop()
        self.proxy.close()
        if self._observer is not None:
            self._observer.close()
        self.dbs.drop_later(self.db_url)

    # --- passes ------------------------------------------------------------------

    def begin_pass(self, number: int, *, fault: bool) -> None:
        with self._lock:
            self.pass_no = number
            self.fault = fault
            self.counts.clear()
            self.crashed.clear()
        if fault:
            for event in self._triggers.get((number, "start", 0), []):
                if event.action != "process":
                    self._fire_anywhere(event)

    def end_pass(self) -> None:
        with self._lock:
            self.fault = False
        self.sim.faults.clear()
        self.proxy.restore()
        if self.read_only:
            self.dbs.read_only(self.db_url, False)
            self.read_only = False
        self.kill = None

    def env(self, number: int | None, **extra: str) -> dict[str, str]:
        """The worker's environment for fault pass ``number`` (None: the drain's, canonical)."""
        host, slash, case, password = "127.0.0.1", False, "as_is", "right"
        if number is not None:
            for event in self._triggers.get((number, "start", 0), []):
                if event.action == "process":
                    host, case, password = (
                        event.text("base_url"),
                        event.text("username"),
                        event.text("password"),
                    )
                    slash = bool(event.get("slash"))
        username = {"as_is": USERNAME, "upper": USERNAME.upper(), "title": USERNAME.title()}[case]
        env = self.sim.worker_env(
            accounts=self.schedule.accounts,
            database_url=self.proxy.conninfo(),
            THINGSPACE_BASE_URL=f"http://{host}:{self.sim.port}/api" + ("/" if slash else ""),
            THINGSPACE_USERNAME=username,
            THINGSPACE_PASSWORD=PASSWORD if password == "right" else STALE_PASSWORD,
            SYNC_CONCURRENCY="1",
        )
        env.update(extra)
        return env

    def operator_env(self) -> dict[str, str]:
        """An operator's shell: canonical settings, straight to the database (no proxy)."""
        env = self.env(None)
        env["SYNC_DATABASE_URL"] = self.dbs.worker_url(self.db_url)
        env["SYNC_LOG_LEVEL"] = "CRITICAL"
        return env

    # --- traffic -----------------------------------------------------------------

    def inject(self, account: str, n: int) -> None:
        start = self.serial[account]
        self.sim.inject(account, make_messages(account, start, n))
        self.serial[account] = start + n
        self.injected += n

    # --- the simulator's hooks -----------------------------------------------------

    def _drop(self, request: simulator.Request) -> bool:
        self._local.rewrite = None
        with self._lock:
            if not self.fault:
                return False
            self.counts[request.kind] += 1
            due = list(self._triggers.get((self.pass_no, request.kind, self.counts[request.kind]), []))
        drop = False
        for event in due:
            if self.crashed.is_set():
                break
            self.note(event)
            drop = self._fire(event, request.kind) or drop
        return drop

    def _fire(self, event: sched.Event, kind: str) -> bool:  # noqa: PLR0912  # one branch per action
        """Apply ``event`` to the request of ``kind`` being served; True drops it unanswered."""
        faults = self.sim.faults
        action = event.action
        if action == "status":
            faults.script(kind, [_status_step(event)])
        elif action == "unauthorized":
            faults.script(kind, [simulator.Raw(401, wire.BEARER_FAULT_BODY, wire.JSON_HEADERS)])
        elif action in ("expire_session", "expire_bearer"):
            faults.script(kind, [action])
        elif action == "reset_before":
            return True
        elif action == "reset_after":
            faults.script(kind, ["lost_response"])
        elif action == "gateway_after":
            faults.script(kind, [simulator.gateway_error_after_processing(504)])
        elif action == "timeout":
            faults.script(kind, ["timeout"])
        elif action == "slow":
            threading.Event().wait(event.number("seconds"))
        elif action == "trickle":
            # At most ~16 pieces whatever the block's size: slow, but bounded.
            chunk = max(int(event.number("chunk")), self.schedule.block_size * 160 // 16)
            faults.script(kind, [simulator.Trickle(chunk, event.number("gap"))])
        elif action == "unreadable":
            faults.script(kind, [simulator.Mangle(event.text("kind"))])
        elif action in ("envelope", "location"):
            self._local.rewrite = event
        elif action == "crash":
            return self._crash(event, kind)
        else:
            self._fire_anywhere(event)
        return False

    def _crash(self, event: sched.Event, kind: str) -> bool:
        self.crashed.set()
        if self.kill is not None:
            self.kill()
        if event.text("point") == "after_processing":
            if self.kill is None:
                # In-process: processed, then the connection goes; the worker sees Crash.
                self.sim.faults.script(kind, ["lost_response"])
            return False
        return True

    def at_commit(self, stage: str) -> None:
        """Called by the in-process worker around each block commit (``stage``: before/after)."""
        with self._lock:
            if not self.fault:
                return
            if stage == "before":
                self.counts["commit"] += 1
            due = list(self._triggers.get((self.pass_no, "commit", self.counts["commit"]), []))
        for event in due:
            if event.action == "crash":
                if event.text("point") == f"{stage}_commit":
                    self.note(event)
                    self.crashed.set()
                    raise Crash(f"crash point {stage}_commit")
            elif stage == "before":
                self.note(event)
                self._fire_anywhere(event)

    def _fire_anywhere(self, event: sched.Event) -> None:
        action = event.action
        if action == "db_cut":
            self.proxy.cut()
            self.proxy.restore()
        elif action == "db_terminate":
            self.dbs.terminate_all(self.db_url)
        elif action == "db_readonly":
            self.dbs.read_only(self.db_url, True)
            self.read_only = True
        elif action == "operator":
            self.run_operator(event.text("command"), event.text("account"), int(event.get("days") or 30))
        elif action == "inject":
            self.inject(event.text("account"), int(event.number("count")))
        else:
            raise ValueError(f"unknown action {action!r}")

    def _rewrite(self, request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
        event: sched.Event | None = getattr(self._local, "rewrite", None)
        self._local.rewrite = None
        if event is None or request.kind != "history" or answer.status not in (200, 202):
            # Only a block's answer has an envelope and a Location to play with.
            return None
        variant = int(event.number("variant"))
        if event.action == "envelope":
            return envelope.apply(event.text("form"), variant, answer)
        return envelope.location(event.text("form"), variant, answer, self.origin)

    def _final_block(self, account: str, messages: list[Any]) -> None:
        with self._lock:
            self.final_deliveries.append((self.pass_no, account, list(messages)))

    def note(self, event: sched.Event) -> None:
        with self._lock:
            self.notes.append(f"pass {event.pass_no} {event.at}: {event.action} {dict(event.params)}")

    # --- operators -------------------------------------------------------------------

    def run_operator(self, command: str, account: str, days: int) -> int | None:
        """An operator command as the operator would run it; ``auth reset`` only when the vendor's
        count is truly 0 (the README's rule), else skipped (None)."""
        if command == "auth_reset" and self.sim.failed_login_streak() != 0:
            self.notes.append(f"auth reset skipped: the vendor's count is {self.sim.failed_login_streak()}")
            return None
        argv = _OPERATOR_ARGV[command](account, days)
        before = set(self.stored()) if command == "retention_apply" else set()
        code = self.operator(argv, self.operator_env())
        self.notes.append(f"operator `sync-worker {' '.join(argv)}` -> exit {code}")
        if before:
            for key in before - set(self.stored()):
                self.removed.setdefault(key, f"`sync-worker {' '.join(argv)}` in pass {self.pass_no}")
        return code

    def portal_login(self) -> bool:
        """What the README tells an operator to do first: one login outside the worker (the
        portal), which clears the vendor's count when it succeeds."""
        http = requests.Session()
        http.trust_env = False
        try:
            token = http.post(
                f"{self.origin}/api/ts/v1/oauth2/token",
                auth=(CLIENT_ID, CLIENT_SECRET),
                data={"grant_type": "client_credentials"},
                timeout=5,
            ).json()["access_token"]
            answer = http.post(
                f"{self.origin}/api/m2m/v1/session/login",
                headers={"Authorization": f"Bearer {token}"},
                json={"username": USERNAME, "password": PASSWORD},
                timeout=5,
            )
            return answer.status_code == 200
        finally:
            http.close()

    # --- what the invariants read ----------------------------------------------------------

    def acknowledged(self) -> collections.Counter[Key]:
        return self._keys(self.sim.acknowledged)

    def queued(self) -> collections.Counter[Key]:
        return self._keys(self.sim.queued)

    def _keys(self, read: Callable[[str], list[Any]]) -> collections.Counter[Key]:
        found: collections.Counter[Key] = collections.Counter()
        for account in self.schedule.accounts:
            for message in read(account):
                found[(account, str(message.get("message")))] += 1
        return found

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of ``statement`` on the harness's own connection (straight to the database, spared
        by the database faults; a lost one is opened again)."""
        for attempt in range(2):
            if self._observer is None or self._observer.closed:
                self._observer = psycopg.connect(self.db_url, autocommit=True, application_name=pg.OBSERVER)
            try:
                return self._observer.execute(statement).fetchall()
            except psycopg.OperationalError:
                self._observer.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stored(self) -> collections.Counter[Key]:
        found: collections.Counter[Key] = collections.Counter()
        for account, raw in self.query("SELECT account_name, raw_json FROM sms_history"):
            try:
                text = json.loads(raw).get("message")
            except (ValueError, AttributeError):
                continue
            found[(str(account), str(text))] += 1
        return found

    def quarantined(self) -> list[tuple[str, bytes]]:
        return [(str(a), bytes(b)) for a, b in self.query("SELECT account_name, body FROM sms_quarantine")]

    def quarantine_seen(self) -> int:
        """Blocks quarantined so far, a re-quarantined block counted again."""
        rows = self.query("SELECT coalesce(sum(seen_count), 0) FROM sms_quarantine")
        return int(rows[0][0])

    def at_risk(self) -> set[Key]:
        """Final blocks the platform dequeued on delivery to a pass that died or failed that account:
        lost whatever a client does (the platform's rule, not the worker's promise)."""
        records = {r.number: r for r in self.records}
        out: set[Key] = set()
        for number, account, messages in self.final_deliveries:
            record = records.get(number)
            if record is None or record.crashed or account in record.failed:
                out.update((account, str(m.get("message"))) for m in messages)
        return out


def in_quarantine(key: Key, kept: list[tuple[str, bytes]]) -> bool:
    """Whether the message's text, as the simulator serialised it, is in a kept body of its account."""
    account, text = key
    needle = wire.dumps(text)
    return any(a == account and needle in body for a, body in kept)


def _status_step(event: sched.Event) -> simulator.Raw:
    status = int(event.number("status"))
    form = event.text("retry_after")
    value = {
        "none": None,
        "seconds": "1",
        "zero": "0",
        "date": simulator.http_date(2),
        "date_past": simulator.http_date(-30),
        "garbage": "soon, maybe",
        "huge": "86400",
        "negative": "-5",
    }[form]
    headers: list[tuple[str, str]] = []
    if status == 429:
        body, headers = b"Too Many Requests", [("Content-Type", "text/plain")]
    elif status in (502, 503, 504):
        phrase = wire.REASONS.get(status, b"Error").decode()
        body, headers = wire.HTML_ERROR.format(code=status, phrase=phrase).encode(), list(wire.HTML_HEADERS)
    else:
        body, headers = wire.m2m_error(wire.CODE_UNEXPECTED, "simulated"), list(wire.JSON_HEADERS)
    if value is not None:
        headers.append(("Retry-After", value))
    return simulator.Raw(status=status, body=body, headers=tuple(headers))
