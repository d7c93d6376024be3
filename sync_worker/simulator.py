"""A local stand-in for ThingSpace over real HTTP (tests, the demo, the benchmarks).

Paths, status codes, headers and body shapes follow ``docs`` / the shared API notes:

* ``POST /api/ts/v1/oauth2/token``: Basic ``client_id:client_secret``, form
  ``grant_type=client_credentials`` -> ``{access_token, token_type: "bearer", expires_in: 3600}``.
  Bad client -> 401 ``{"error": "invalid_client", ...}``; other grant -> 400 ``unsupported_grant_type``.
* ``POST /api/m2m/v1/session/login``: bearer, JSON ``{username, password}`` -> ``{sessionToken}``.
  A wrong password -> 400 ``UnifiedWebService.REQUEST_FAILED.InvalidCredentials``. After
  ``SimConfig.max_failed_logins`` (5) consecutive failures the user is locked like on the real
  platform: every later login (even with the right password) -> 400
  ``UnifiedWebService.REQUEST_FAILED.UserLocked`` until ``Simulator.unlock()``.
* ``POST /api/m2m/v1/session/logout``, ``POST /api/m2m/v1/sms`` (validated, recorded in ``sent``,
  -> ``{requestId}``), ``GET /api/m2m/v1/sms/{aname}/history[?next=T]``,
  ``PUT /api/m2m/v1/sms/{aname}/startCallbacks`` -> ``{success: true}``.
* Every M2M call except login needs a valid bearer (else 401 gateway fault ``900901``) and a valid
  ``VZ-M2M-Token`` (else 400 ``UnifiedWebService.REQUEST_FAILED.SessionToken.Expired``). An unknown
  account -> 400 ``UnifiedWebService.REQUEST_FAILED.AccountNotFound``; an invalid send body -> 400
  ``UnifiedWebService.REQUEST_FAILED.InvalidRequest``.

The history queue (per account):

* A block holds at most ``block_size`` messages from the head of the queue. While more remain after
  it: 202, ``hasMoreData: true`` and ``Location: /sms/{aname}/history?next={token}`` (relative to
  ``/api/m2m/v1``); the token is 20 random letters/digits. Otherwise 200, ``hasMoreData: false``, no
  ``Location``.
* ``GET ...?next=T`` acknowledges (dequeues) the block T came with and returns the block after it.
  A GET without ``next`` returns the oldest unacknowledged block again (with the same token while
  that block is unchanged).
* An unknown token, or a replay of a token whose follow-up block was itself acknowledged since, ->
  400 ``UnifiedWebService.REQUEST_FAILED.InvalidNextToken``.
* ``token_mode="reusable"``: replaying a used token (a retry after a lost response) acknowledges
  nothing more and returns the block that follows again. ``"single_use"``: the second use of a token
  -> the ``InvalidNextToken`` error.
* ``final_ack="on_delivery"``: the final (200) block is dequeued once its response has been written
  completely to the socket. ``"on_next_get"``: it stays queued; the next GET *without* ``next``
  first dequeues it (the client has had its chance to persist it) and then serves what follows. In
  both modes a final block whose response was not written (a fault, a dropped connection) stays
  queued, so the simulator never loses a message; the real platform may be harsher.

Faults (``Simulator.faults``, every one counted in ``stats.faults``) are decided before the request
is processed, so a faulted request acknowledges nothing. Two deliberate exceptions, both for
exact tests: the scripted ``"lost_response"`` outcome processes the request (the ack happens) and
then drops the connection, and a ``Raw`` entry without a body (a header/status tamper) processes the
request normally and rewrites its reply; neither dequeues a final block.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import email.utils
import http.server
import itertools
import json
import logging
import random
import secrets
import socket
import string
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, TextIO

from sync_worker import secret

_log = logging.getLogger(__name__)

FinalAck = Literal["on_delivery", "on_next_get"]
TokenMode = Literal["reusable", "single_use"]
# Names used for stats, scripts and fault targeting.
PATH_KINDS: Final = ("token", "login", "logout", "send", "history", "start_callbacks")

ERR_PREFIX: Final = "UnifiedWebService.REQUEST_FAILED."
CODE_INVALID_CREDENTIALS: Final = ERR_PREFIX + "InvalidCredentials"
CODE_USER_LOCKED: Final = ERR_PREFIX + "UserLocked"
CODE_SESSION_EXPIRED: Final = ERR_PREFIX + "SessionToken.Expired"
CODE_ACCOUNT_NOT_FOUND: Final = ERR_PREFIX + "AccountNotFound"
CODE_INVALID_NEXT_TOKEN: Final = ERR_PREFIX + "InvalidNextToken"
CODE_INVALID_REQUEST: Final = ERR_PREFIX + "InvalidRequest"
CODE_UNEXPECTED: Final = ERR_PREFIX + "UnexpectedError"

_TOKEN_ALPHABET: Final = string.ascii_letters + string.digits
_MAX_BODY: Final = 1 << 20
_SMS_LIMITS: Final = {"7-bit": 160, "8-bit-ASCII": 140, "8-bit-UTF-8": 140, "8-bit-DATA": 140}
_REASONS: Final = {
    code: phrase.encode("ascii") for code, phrase in ((s.value, s.phrase) for s in http.HTTPStatus)
}
_JSON: Final = (("Content-Type", "application/json"),)
_HTML: Final = (("Content-Type", "text/html; charset=utf-8"),)


def _dumps(obj: Any) -> bytes:
    # ASCII escapes keep lone surrogates and NULs servable exactly as injected.
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _m2m_error(code: str, message: str) -> bytes:
    return _dumps({"errorCode": code, "errorMessage": message})


_SESSION_EXPIRED_BODY: Final = _m2m_error(CODE_SESSION_EXPIRED, "The Session has expired.")
_BEARER_FAULT_BODY: Final = _dumps(
    {
        "fault": {
            "code": 900901,
            "message": "Invalid Credentials",
            "description": "Invalid Credentials. Make sure you have given the correct access token",
        }
    }
)
_HTML_ERROR: Final = (
    "<html><head><title>{code} {phrase}</title></head><body><center><h1>{code} {phrase}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)


def new_token(length: int = 20) -> str:
    """A random token of letters and digits, like the platform's opaque tokens."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(length))


def http_date(seconds_from_now: float) -> str:
    """An RFC 7231 date for ``Retry-After`` tests."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


# --- configuration and fault settings -------------------------------------


@dataclasses.dataclass
class SimConfig:
    """Behaviour switches; every field may be changed while the simulator runs."""

    block_size: int = 100
    final_ack: FinalAck = "on_delivery"
    token_mode: TokenMode = "reusable"  # noqa: S105 - a mode name, not a password
    # Read once at construction; add accounts later with ``add_account`` or ``inject``.
    accounts: tuple[str, ...] = ("0252012345-00001",)
    client_id: str = "sim-client-id"
    client_secret: secret.Secret = dataclasses.field(
        default_factory=lambda: secret.Secret("sim-client-secret")
    )
    username: str = "sim-user"
    password: secret.Secret = dataclasses.field(default_factory=lambda: secret.Secret("sim-password"))
    max_failed_logins: int = 5
    bearer_ttl: float = 3600.0
    # The platform drops a session after 20 minutes without use.
    session_idle_timeout: float = 1200.0
    clock: Callable[[], float] = time.monotonic
    host: str = "127.0.0.1"
    port: int = 0
    log_requests: bool = False
    request_log_size: int = 100_000


@dataclasses.dataclass(frozen=True)
class Raw:
    """A scripted reply. With ``body`` set it replaces the reply and the request is not processed;
    with ``body=None`` the request is processed and its reply gets ``status``/``headers`` applied
    (``drop_headers`` removed first)."""

    status: int | None = None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop_headers: tuple[str, ...] = ()


ScriptStep = int | str | Raw


@dataclasses.dataclass
class Faults:
    """Fault settings. Random faults hit only ``kinds``; scripts run first and are one-shot.

    Script steps: an HTTP status (200 = no fault; 429 carries ``retry_after``; 5xx bodies are HTML
    for 502/503 and an M2M error for others), ``"timeout"`` (hold the request past the client's
    read timeout, then drop it unanswered), ``"lost_response"`` (process, then drop the connection),
    ``"expire_session"`` / ``"expire_bearer"`` (expire just before this request is processed), or a
    ``Raw``.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    rate_limit_rate: float = 0.0
    retry_after: str | None = "1"
    kinds: frozenset[str] = frozenset({"send", "history", "start_callbacks"})
    seed: int = 0
    _rng: random.Random = dataclasses.field(init=False, repr=False)
    _scripts: dict[str, collections.deque[ScriptStep]] = dataclasses.field(
        init=False, repr=False, default_factory=dict
    )
    _lock: threading.Lock = dataclasses.field(init=False, repr=False, default_factory=threading.Lock)
    _expire: Callable[[str], None] | None = dataclasses.field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def script(self, kind: str, steps: Iterable[ScriptStep]) -> None:
        """Queue one-shot outcomes for the next requests of ``kind`` (see ``PATH_KINDS``)."""
        if kind not in PATH_KINDS:
            raise ValueError(f"unknown path kind {kind!r}; one of {', '.join(PATH_KINDS)}")
        with self._lock:
            self._scripts.setdefault(kind, collections.deque()).extend(steps)

    def next_history_raw(
        self, body: bytes | None, status: int | None = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Serve these bytes (and headers) as the next history response."""
        self.script("history", [Raw(status=status, body=body, headers=tuple(headers))])

    def pending_scripts(self, kind: str) -> int:
        with self._lock:
            return len(self._scripts.get(kind, ()))

    def clear(self) -> None:
        """Back to a fault-free simulator."""
        with self._lock:
            self._scripts.clear()
            self.latency = self.error_rate = self.timeout_rate = self.rate_limit_rate = 0.0

    def expire_session(self) -> None:
        """Invalidate every session token: the next M2M call gets ``SessionToken.Expired``."""
        if self._expire is not None:
            self._expire("session")

    def expire_bearer(self) -> None:
        """Invalidate every OAuth token: the next call gets the 401 gateway fault."""
        if self._expire is not None:
            self._expire("bearer")

    def decide(self, kind: str) -> ScriptStep | None:
        with self._lock:
            steps = self._scripts.get(kind)
            if steps:
                return steps.popleft()
            if kind not in self.kinds or not (self.error_rate or self.timeout_rate or self.rate_limit_rate):
                return None
            roll = self._rng.random()
            if roll < self.timeout_rate:
                return "timeout"
            roll -= self.timeout_rate
            if roll < self.rate_limit_rate:
                return 429
            roll -= self.rate_limit_rate
            if roll < self.error_rate:
                return self._rng.choice(self.error_statuses)
            return None


# --- statistics ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    query: str
    status: int | None  # None when no response was written (timeout, lost response)
    kind: str


class Stats:
    """Counters and a request log. Never holds credentials or tokens other than ``next``."""

    COUNTERS: Final = (
        "token_requests",
        "login_attempts",
        "logins",
        "failed_logins",
        "logouts",
        "history_requests",
        "acks",
        "replays",
        "final_dequeues",
        "sends",
        "start_callbacks",
    )

    def __init__(self, log_size: int) -> None:
        self._lock = threading.Lock()
        self.token_requests = 0
        self.login_attempts = 0
        self.logins = 0
        self.failed_logins = 0
        self.logouts = 0
        self.history_requests = 0
        self.acks = 0
        self.replays = 0
        self.final_dequeues = 0
        self.sends = 0
        self.start_callbacks = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=log_size)

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def record(self, rec: RequestRecord) -> None:
        self.requests.append(rec)  # deque.append is atomic

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
            out["faults"] = dict(self.faults)
            return out


# --- the history queue ---------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Block:
    token: str
    first: int
    last: int
    acked: bool = False
    # What using this token returned: (first seq, last seq, token or None); None before use.
    follow: tuple[int, int, str | None] | None = None


@dataclasses.dataclass(slots=True)
class _HistoryReply:
    status: int
    body: bytes
    location: str | None = None
    after_write: Callable[[], None] | None = None
    error: bool = False


class _AccountQueue:
    """One account's queue; all state behind one lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.items: collections.deque[tuple[int, bytes, Any]] = collections.deque()
        self.next_seq = 0
        self.acknowledged: list[Any] = []
        self.blocks: dict[str, _Block] = {}
        self.issued: list[str] = []
        self.ack_counts: dict[str, int] = {}
        self.head: _Block | None = None
        self.pending_final: int | None = None
        self.location_prefix = "/sms/" + urllib.parse.quote(name, safe="") + "/history?next="

    def add(self, messages: Iterable[Any]) -> None:
        blobs = [(m, _dumps(m)) for m in messages]
        with self.lock:
            for message, blob in blobs:
                self.items.append((self.next_seq, blob, message))
                self.next_seq += 1

    def _dequeue_through(self, last: int) -> int:
        n = 0
        while self.items and self.items[0][0] <= last:
            self.acknowledged.append(self.items.popleft()[2])
            n += 1
        return n

    def _serve_head(self, cfg: SimConfig, stats: Stats) -> _HistoryReply:
        size = max(1, cfg.block_size)
        block = list(itertools.islice(self.items, size))
        blobs = b",".join(item[1] for item in block)
        if len(self.items) > len(block):
            first, last = block[0][0], block[-1][0]
            head = self.head
            if head is None or head.acked or (head.first, head.last) != (first, last):
                head = _Block(new_token(), first, last)
                self.blocks[head.token] = head
                self.issued.append(head.token)
                self.head = head
            body = b'{"hasMoreData":true,"messages":[' + blobs + b"]}"
            return _HistoryReply(202, body, self.location_prefix + head.token)
        body = b'{"hasMoreData":false,"messages":[' + blobs + b"]}"
        reply = _HistoryReply(200, body)
        if block:
            last = block[-1][0]
            if cfg.final_ack == "on_delivery":
                reply.after_write = lambda: self._final_delivered(last, stats)
            else:
                reply.after_write = lambda: self._final_pending(last)
        return reply

    def _final_delivered(self, last: int, stats: Stats) -> None:
        with self.lock:
            n = self._dequeue_through(last)
        if n:
            stats.bump("final_dequeues")

    def _final_pending(self, last: int) -> None:
        with self.lock:
            self.pending_final = last if self.pending_final is None else max(last, self.pending_final)

    def get(self, token: str | None, cfg: SimConfig, stats: Stats) -> _HistoryReply:
        with self.lock:
            if token is None:
                if self.pending_final is not None:
                    if self._dequeue_through(self.pending_final):
                        stats.bump("final_dequeues")
                    self.pending_final = None
                return self._serve_head(cfg, stats)
            block = self.blocks.get(token)
            if block is None:
                return _invalid_token()
            if block.acked:
                if cfg.token_mode == "single_use":  # noqa: S105
                    return _invalid_token()
                follow = block.follow
                if follow is not None and follow[2] is not None:
                    nxt = self.blocks.get(follow[2])
                    if nxt is not None and nxt.acked:
                        return _invalid_token()
                stats.bump("replays")
                return self._serve_head(cfg, stats)
            self._dequeue_through(block.last)
            block.acked = True
            self.ack_counts[token] = self.ack_counts.get(token, 0) + 1
            stats.bump("acks")
            reply = self._serve_head(cfg, stats)
            served = self.head if reply.location is not None else None
            if served is not None:
                block.follow = (served.first, served.last, served.token)
            else:
                block.follow = (-1, -1, None)
            return reply


def _invalid_token() -> _HistoryReply:
    return _HistoryReply(
        400,
        _m2m_error(CODE_INVALID_NEXT_TOKEN, "The next token is invalid or has expired."),
        error=True,
    )


# --- deterministic traffic -----------------------------------------------

_TEXTS: Final = (
    "Temp 21.5C battery 87%",
    "Température 21°C, humidité 45%",
    "ALARM door open",
    "GPS 40.7128,-74.0060 speed 0",
    "温度 22度 电池 80%",
    "🔋 low battery (12%)",
    "heartbeat",
    "Tür geöffnet — Sensor 3",
    "pressure=1013hPa flow=0.0",
    "reboot reason=watchdog",
)
_OFFSETS: Final = ("-08:00", "-05:00", "+00:00", "+05:30", "-07:00", "+01:00")


def _device(rng: random.Random) -> dict[str, str]:
    kind = rng.choice(("imei", "iccid", "mdn", "msisdn", "meid", "esn", "eid"))
    digits = {"imei": 15, "mdn": 10, "msisdn": 11, "esn": 11, "eid": 32}
    if kind == "iccid":
        ident = "89" + "".join(rng.choices(string.digits, k=18))
    elif kind == "meid":
        ident = "".join(rng.choices("0123456789ABCDEF", k=14))
    else:
        ident = "".join(rng.choices(string.digits, k=digits[kind]))
    if rng.random() < 0.2:
        # Leading zeros matter: the store must keep ids as strings.
        ident = "00" + ident[2:]
    if rng.random() < 0.05:
        kind = kind.upper()
    return {"id": ident, "kind": kind}


def seed_messages(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` deterministic, realistic history messages (a few exact duplicates included)."""
    rng = random.Random(seed)
    devices = [_device(rng) for _ in range(max(1, n // 10 + 3))]
    base = 1_714_564_800  # 2024-05-01T12:00:00Z
    out: list[dict[str, Any]] = []
    t = float(base)
    for i in range(n):
        # Exact repeats arrive back to back (a device or the platform sending twice);
        # one copying a message from far back would be a different instant, not a repeat.
        if out and rng.random() < 0.02:
            out.append(dict(out[-1]))
            continue
        t += rng.uniform(0.5, 90.0)
        if rng.random() < 0.25:
            ms = int((t % 1) * 1000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"
        else:
            offset = rng.choice(_OFFSETS)
            sign = -1 if offset[0] == "-" else 1
            shift = sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + shift)) + offset
        device = rng.choice(devices)
        out.append(
            {
                "deviceIds": [dict(device)],
                "message": f"{rng.choice(_TEXTS)} #{i}",
                "timestamp": stamp,
            }
        )
    return out


# --- HTTP ----------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    sim: Simulator

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the crash harness does it on purpose) is not a
        # simulator fault; anything else still gets the default traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Dropped(Exception):
    """The handler must close the connection without answering."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.config.log_requests:
            _log.info("simulator %s", format % args)

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def write_reply(self, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Content-Length: %d\r\n" % len(body))
        if self.close_connection:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.wfile.write(b"".join(head) + body)


_M2M: Final = "/api/m2m/v1"


def _route(method: str, path: str) -> tuple[str, str | None] | None:
    """(kind, account) for a known endpoint; None otherwise."""
    if path == "/api/ts/v1/oauth2/token":
        return ("token", None) if method == "POST" else None
    if not path.startswith(_M2M + "/"):
        return None
    rest = path[len(_M2M) :]
    if method == "POST":
        return {
            "/session/login": ("login", None),
            "/session/logout": ("logout", None),
            "/sms": ("send", None),
        }.get(rest)
    parts = rest.split("/")
    if len(parts) == 4 and parts[1] == "sms" and parts[2]:
        account = urllib.parse.unquote(parts[2])
        if method == "GET" and parts[3] == "history":
            return "history", account
        if method == "PUT" and parts[3] == "startCallbacks":
            return "start_callbacks", account
    return None


_COUNTER_FOR: Final = {
    "token": "token_requests",
    "login": "login_attempts",
    "logout": "logouts",
    "send": "sends",
    "history": "history_requests",
    "start_callbacks": "start_callbacks",
}


class Simulator:
    """An in-process ThingSpace. ``start()`` binds ``config.host:config.port`` (0 = any free port)."""

    def __init__(self, config: SimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or SimConfig()
        self.faults = faults or Faults()
        self.faults._expire = self._expire
        self.stats = Stats(self.config.request_log_size)
        self.sent: list[Any] = []
        self._lock = threading.Lock()
        # Requests between processing and their after-write step (a final block's
        # dequeue). Observers wait for zero so a client that already holds the
        # response never sees the queue from before it.
        self._unsettled = 0
        self._settled = threading.Condition()
        self._queues: dict[str, _AccountQueue] = {}
        for account in self.config.accounts:
            self._queue(account, create=True)
        self._bearers: dict[str, float] = {}
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        self._server = _Server((self.config.host, self.config.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        # Wakes handlers held by latency or timeout faults.
        self._stopping.set()
        server.shutdown()
        with server.conns_lock:
            conns = list(server.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api``, the value for ``ClientConfig.base_url``."""
        return f"http://{self.config.host}:{self.port}/api"

    # -- traffic --

    def _queue(self, account: str, *, create: bool = False) -> _AccountQueue:
        with self._lock:
            q = self._queues.get(account)
            if q is None:
                q = _AccountQueue(account)
                if create:
                    self._queues[account] = q
            # An unknown account reads as an empty, detached queue.
            return q

    def add_account(self, account: str) -> None:
        self._queue(account, create=True)

    def accounts(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    def inject(self, account: str, messages: Iterable[Any]) -> None:
        """Queue wire messages as given (malformed ones too). Creates the account if needed."""
        self._queue(account, create=True).add(messages)

    def seed(self, account: str, n: int, seed: int = 1) -> list[dict[str, Any]]:
        """Queue ``n`` deterministic realistic messages and return them."""
        messages = seed_messages(n, seed)
        self.inject(account, messages)
        return messages

    def acknowledged(self, account: str) -> list[Any]:
        """The delivered set: messages dequeued so far, in order."""
        self._settle()
        q = self._queue(account)
        with q.lock:
            return list(q.acknowledged)

    def queued(self, account: str) -> list[Any]:
        self._settle()
        q = self._queue(account)
        with q.lock:
            return [item[2] for item in q.items]

    def issued_tokens(self, account: str) -> list[str]:
        """Every ``next`` token handed out for ``account``, in order."""
        q = self._queue(account)
        with q.lock:
            return list(q.issued)

    def token_acks(self, account: str) -> dict[str, int]:
        """How many times each token acknowledged its block (replays do not count)."""
        q = self._queue(account)
        with q.lock:
            return {token: q.ack_counts.get(token, 0) for token in q.issued}

    # -- auth state --

    def _expire(self, what: str) -> None:
        with self._lock:
            if what == "session":
                self._sessions.clear()
            else:
                self._bearers.clear()

    def expire_session(self) -> None:
        self.faults.expire_session()

    def expire_bearer(self) -> None:
        self.faults.expire_bearer()

    def unlock(self, username: str | None = None) -> None:
        """Reset the failed-login count (what vendor support does for a locked user)."""
        with self._lock:
            if username is None:
                self._failures.clear()
            else:
                self._failures.pop(username, None)

    def _bearer_ok(self, header: str | None) -> bool:
        if not header or header[:7].lower() != "bearer ":
            return False
        with self._lock:
            expiry = self._bearers.get(header[7:].strip())
        return expiry is not None and expiry > self.config.clock()

    def _session_ok(self, token: str | None) -> bool:
        if not token:
            return False
        now = self.config.clock()
        with self._lock:
            last = self._sessions.get(token)
            if last is None or now - last > self.config.session_idle_timeout:
                self._sessions.pop(token, None)
                return False
            self._sessions[token] = now
            return True

    # -- request handling --

    def _handle(self, h: _Handler, method: str) -> None:
        split = urllib.parse.urlsplit(h.path)
        route = _route(method, split.path)
        kind = route[0] if route else "unknown"
        status: int | None = None
        try:
            length = int(h.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                h.close_connection = True
                status = 413
                h.write_reply(413, _m2m_error(CODE_INVALID_REQUEST, "Request too large"), _JSON)
                return
            body = h.rfile.read(length) if length else b""
            if route is None:
                status = 404
                h.write_reply(404, _dumps({"error": "not_found", "path": split.path}), _JSON)
                return
            status = self._serve(h, kind, route[1], split.query, body)
        except _Dropped:
            h.close_connection = True
        except (ConnectionError, OSError, ValueError):
            h.close_connection = True
        finally:
            self.stats.record(RequestRecord(method, split.path, split.query, status, kind))

    def _serve(self, h: _Handler, kind: str, account: str | None, query: str, body: bytes) -> int:
        self.stats.bump(_COUNTER_FOR[kind])
        faults = self.faults
        if faults.latency > 0:
            self.stats.fault("latency")
            if self._stopping.wait(faults.latency):
                raise _Dropped
        step = faults.decide(kind)
        tamper: Raw | None = None
        lose = False
        if step is not None and step != 200:
            if isinstance(step, Raw) and step.body is None:
                self.stats.fault("tamper")
                tamper = step
            elif step == "lost_response":
                self.stats.fault("lost_response")
                lose = True
            elif step in ("expire_session", "expire_bearer"):
                # Expiry lands exactly on this request; it is then processed (and refused) as usual.
                self.stats.fault(step)
                self._expire("session" if step == "expire_session" else "bearer")
            else:
                return self._fault_reply(h, step)
        with self._settled:
            self._unsettled += 1
        try:
            status, reply_body, headers, after_write = self._process(h, kind, account, query, body)
            if lose:
                raise _Dropped
            if tamper is not None:
                drop = {name.lower() for name in tamper.drop_headers} | {n.lower() for n, _ in tamper.headers}
                headers = [(n, v) for n, v in headers if n.lower() not in drop] + list(tamper.headers)
                status = tamper.status if tamper.status is not None else status
                after_write = None
            h.write_reply(status, reply_body, headers)
            if after_write is not None:
                after_write()
            return status
        finally:
            with self._settled:
                self._unsettled -= 1
                self._settled.notify_all()

    def _settle(self, timeout: float = 10.0) -> None:
        with self._settled:
            self._settled.wait_for(lambda: self._unsettled == 0, timeout=timeout)

    def _fault_reply(self, h: _Handler, step: ScriptStep) -> int:
        if isinstance(step, Raw):
            self.stats.fault("raw")
            status = step.status if step.status is not None else 200
            h.write_reply(status, step.body or b"", step.headers)
            return status
        if step == "timeout":
            self.stats.fault("timeout")
            self._stopping.wait(self.faults.timeout_seconds)
            raise _Dropped
        if not isinstance(step, int):
            raise ValueError(f"unknown script step {step!r}")
        self.stats.fault(str(step))
        if step == 429:
            headers: list[tuple[str, str]] = [("Content-Type", "text/plain")]
            if self.faults.retry_after is not None:
                headers.append(("Retry-After", self.faults.retry_after))
            h.write_reply(429, b"Too Many Requests", headers)
            return 429
        phrase = _REASONS.get(step, b"Error").decode()
        if step in (502, 503, 504):
            page = _HTML_ERROR.format(code=step, phrase=phrase).encode()
            h.write_reply(step, page, _HTML)
        else:
            h.write_reply(step, _m2m_error(CODE_UNEXPECTED, f"{phrase} (simulated)"), _JSON)
        return step

    def _process(
        self, h: _Handler, kind: str, account: str | None, query: str, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]], Callable[[], None] | None]:
        if kind == "token":
            return self._token(h, body)
        if not self._bearer_ok(h.headers.get("Authorization")):
            return 401, _BEARER_FAULT_BODY, list(_JSON), None
        if kind == "login":
            return self._login(body)
        if not self._session_ok(h.headers.get("VZ-M2M-Token")):
            return 400, _SESSION_EXPIRED_BODY, list(_JSON), None
        if kind == "logout":
            token = h.headers.get("VZ-M2M-Token") or ""
            with self._lock:
                self._sessions.pop(token, None)
            return 200, _dumps({"sessionToken": token}), list(_JSON), None
        if kind == "send":
            return self._send(body)
        assert account is not None
        with self._lock:
            q = self._queues.get(account)
        if q is None:
            return 400, _m2m_error(CODE_ACCOUNT_NOT_FOUND, "Account not found."), list(_JSON), None
        if kind == "start_callbacks":
            return 200, b'{"success":true}', list(_JSON), None
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        next_token = params["next"][0] if "next" in params else None
        reply = q.get(next_token, self.config, self.stats)
        headers = list(_JSON)
        if reply.location is not None:
            headers.append(("Location", reply.location))
        return reply.status, reply.body, headers, reply.after_write

    def _token(self, h: _Handler, body: bytes) -> tuple[int, bytes, list[tuple[str, str]], None]:
        auth = h.headers.get("Authorization") or ""
        client_id = client_secret = None
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
                client_id, _, client_secret = decoded.partition(":")
            except ValueError:
                pass
        if client_id != self.config.client_id or client_secret != self.config.client_secret.reveal():
            error = {"error": "invalid_client", "error_description": "Client authentication failed"}
            return 401, _dumps(error), list(_JSON), None
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            error = {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            }
            return 400, _dumps(error), list(_JSON), None
        token = new_token(32)
        with self._lock:
            self._bearers[token] = self.config.clock() + self.config.bearer_ttl
        payload = {
            "access_token": token,
            "scope": "default",
            "token_type": "bearer",
            "expires_in": int(self.config.bearer_ttl),
        }
        return 200, _dumps(payload), list(_JSON), None

    def _login(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]], None]:
        try:
            creds = json.loads(body)
        except ValueError:
            creds = None
        if not isinstance(creds, dict):
            return 400, _m2m_error(CODE_INVALID_REQUEST, "Malformed request body."), list(_JSON), None
        ok = False
        token = ""
        username = creds.get("username")
        password = creds.get("password")
        with self._lock:
            failures = self._failures.get(str(username), 0)
            if failures >= self.config.max_failed_logins:
                locked = True
            else:
                locked = False
                ok = username == self.config.username and password == self.config.password.reveal()
                if ok:
                    self._failures.pop(str(username), None)
                    token = new_token(32)
                    self._sessions[token] = self.config.clock()
                else:
                    self._failures[str(username)] = failures + 1
        if locked:
            self.stats.bump("failed_logins")
            message = "User account is locked. Contact support to unlock it."
            return 400, _m2m_error(CODE_USER_LOCKED, message), list(_JSON), None
        if not ok:
            self.stats.bump("failed_logins")
            message = "Invalid username or password."
            return 400, _m2m_error(CODE_INVALID_CREDENTIALS, message), list(_JSON), None
        self.stats.bump("logins")
        return 200, _dumps({"sessionToken": token}), list(_JSON), None

    def _send(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]], None]:
        def invalid(message: str) -> tuple[int, bytes, list[tuple[str, str]], None]:
            return 400, _m2m_error(CODE_INVALID_REQUEST, message), list(_JSON), None

        try:
            req = json.loads(body)
        except ValueError:
            return invalid("Malformed request body.")
        if not isinstance(req, dict):
            return invalid("Malformed request body.")
        account = req.get("accountName")
        if not isinstance(account, str) or not account:
            return invalid("accountName is required.")
        text = req.get("smsMessage")
        if not isinstance(text, str) or not text:
            return invalid("smsMessage is required.")
        encoding = req.get("dataEncoding", "7-bit")
        limit = _SMS_LIMITS.get(encoding) if isinstance(encoding, str) else None
        if limit is None:
            return invalid("dataEncoding is invalid.")
        length = len(text.encode("utf-8")) if encoding == "8-bit-UTF-8" else len(text)
        if length > limit:
            return invalid(f"smsMessage exceeds {limit} characters.")
        devices = req.get("deviceIds")
        if devices is not None and (
            not isinstance(devices, list)
            or not all(
                isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("kind"), str)
                for d in devices
            )
        ):
            return invalid("deviceIds is invalid.")
        if not devices and not req.get("groupName"):
            return invalid("deviceIds or groupName is required.")
        with self._lock:
            known = account in self._queues
            if known:
                self.sent.append(req)
        if not known:
            return 400, _m2m_error(CODE_ACCOUNT_NOT_FOUND, "Account not found."), list(_JSON), None
        return 200, _dumps({"requestId": str(uuid.uuid4())}), list(_JSON), None


# --- standalone ------------------------------------------------------------


def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    seed_messages: int = 0,
    accounts: Sequence[str] = ("0252012345-00001",),
    *,
    seed: int = 1,
    config: SimConfig | None = None,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> None:
    """Run a simulator until ``stop`` is set (or KeyboardInterrupt), printing how to reach it."""
    cfg = config or SimConfig()
    cfg.host, cfg.port, cfg.accounts = host, port, tuple(accounts)
    stream = out or sys.stdout
    sim = Simulator(cfg)
    for i, account in enumerate(cfg.accounts):
        if seed_messages:
            sim.seed(account, seed_messages, seed=seed + i)
    stop_event = stop or threading.Event()
    with sim:
        # These are the simulator's own fixed demo credentials, not real secrets.
        print(f"ThingSpace simulator listening on {sim.base_url}", file=stream)
        print(f"  client id:     {cfg.client_id}", file=stream)
        print(f"  client secret: {cfg.client_secret.reveal()}", file=stream)
        print(f"  username:      {cfg.username}", file=stream)
        print(f"  password:      {cfg.password.reveal()}", file=stream)
        print(f"  accounts:      {', '.join(cfg.accounts)} ({seed_messages} messages each)", file=stream)
        stream.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop_event.wait()
