"""Fault settings and one-shot scripts: what the next requests of a kind get instead of a normal reply."""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
from collections.abc import Callable, Iterable, Sequence

from sync_worker.simulator import wire


@dataclasses.dataclass(frozen=True)
class Raw:
    """A scripted reply. With ``body`` set it replaces the reply and the request is not processed
    (unless ``process``: then the request is processed first and only its answer replaced, the way
    a gateway's 504 can follow a login the platform already counted); with ``body=None`` the
    request is processed and its reply gets ``status``/``headers`` applied (``drop_headers``
    removed first)."""

    status: int | None = None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop_headers: tuple[str, ...] = ()
    process: bool = False


@dataclasses.dataclass(frozen=True)
class Mangle:
    """A history request processed as usual whose answer is then made unreadable (``UNREADABLE_KINDS``,
    or one of ``ENVELOPE_KINDS``: JSON that the acknowledgement gate does not take for the block).

    Like any reply the client could not read, it is not treated as delivered: a final block stays queued.
    """

    kind: str


@dataclasses.dataclass(frozen=True)
class Trickle:
    """The request is processed as usual (a login counts, a ``next`` acknowledges), then its
    answer is written ``chunk`` bytes at a time, ``gap`` seconds before each piece: each read
    comes well within a read timeout, the whole answer is slow. The head goes at once, or is
    trickled too with ``head=True``. ``endless=True``: the answer never ends (``Content-Length``
    promises a gigabyte more, spaces follow the body for ever) and is never delivered, so a final
    block it stood for stays queued; it stops when the client goes away or the simulator stops."""

    chunk: int = 64
    gap: float = 0.05
    head: bool = False
    endless: bool = False


UNREADABLE_KINDS = ("cut_short", "not_json", "wrong_envelope", "empty_200", "bare_202")
# Well-formed JSON that still is not the block (``gate.recognise`` refuses each). Those named
# ``*_202`` / ``*_200`` fit an answer of that status; the others fit either.
ENVELOPE_KINDS = (
    "no_messages",
    "renamed_messages",
    "empty_object",
    "duplicate_messages",
    "no_has_more",
    "has_more_not_bool",
    "has_more_false_202",
    "has_more_true_200",
    "no_messages_202",
)
_HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
_MESSAGES = b'"messages":'
_MORE_TRUE = b'"hasMoreData":true'
_MORE_FALSE = b'"hasMoreData":false'


def mangle(
    kind: str, status: int, body: bytes, headers: Sequence[tuple[str, str]]
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """The unreadable form ``kind`` of a history answer (status, body, headers)."""
    kept = list(headers)
    without_location = [(n, v) for n, v in kept if n.lower() != "location"]
    if kind == "cut_short":
        return status, body[: len(body) // 2], kept
    if kind == "not_json":
        return status, _HTML, [("Content-Type", "text/html"), *[(n, v) for n, v in kept if n == "Location"]]
    if kind == "wrong_envelope":
        # The messages are all there, but hasMoreData is a string: unreadable to a strict reader.
        return (
            status,
            body.replace(b'"hasMoreData":true', b'"hasMoreData":"true"').replace(
                b'"hasMoreData":false', b'"hasMoreData":"false"'
            ),
            kept,
        )
    if kind == "empty_200":
        return 200, b"", without_location
    if kind == "bare_202":
        return 202, b"", without_location
    if kind in ENVELOPE_KINDS:
        return _envelope(kind, status, body, kept, without_location)
    raise ValueError(
        f"unknown unreadable kind {kind!r}; one of {', '.join(UNREADABLE_KINDS + ENVELOPE_KINDS)}"
    )


def _envelope(
    kind: str,
    status: int,
    body: bytes,
    kept: list[tuple[str, str]],
    without_location: list[tuple[str, str]],
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """The answers of ``ENVELOPE_KINDS``, from the simulator's own ``{"hasMoreData":..,"messages":[..]}``."""
    more = _MORE_TRUE if _MORE_TRUE in body else _MORE_FALSE
    if kind == "no_messages":
        return status, b"{" + more + b"}", kept
    if kind == "renamed_messages":
        return status, body.replace(_MESSAGES, b'"smsMessages":', 1), kept
    if kind == "empty_object":
        return status, b"{}", kept
    if kind == "duplicate_messages":
        # The real list first, then an empty one: a reader keeping the last member sees no message.
        return status, body[:-1] + b',"messages":[]}', kept
    if kind == "no_has_more":
        return status, body.replace(more + b",", b"", 1), kept
    if kind == "has_more_not_bool":
        return status, body.replace(more, b'"hasMoreData":1', 1), kept
    if kind == "has_more_false_202":
        return 202, body.replace(_MORE_TRUE, _MORE_FALSE, 1), kept
    if kind == "has_more_true_200":
        return 200, body.replace(_MORE_FALSE, _MORE_TRUE, 1), without_location
    # no_messages_202: the paging of a 202, with its list emptied.
    return 202, b"{" + _MORE_TRUE + b',"messages":[]}', kept


ScriptStep = int | str | Raw | Mangle | Trickle


@dataclasses.dataclass
class Faults:
    """Fault settings. Random faults hit only ``kinds``; scripts run first and are one-shot.

    Script steps: an HTTP status (200 = no fault; 429 carries ``retry_after``; 5xx bodies are HTML
    for 502/503 and an M2M error for others), ``"timeout"`` (hold the request past the client's
    read timeout, then drop it unanswered), ``"lost_response"`` (process, then drop the connection),
    ``"expire_session"`` / ``"expire_bearer"`` (expire just before this request is processed), a
    ``Raw``, a ``Mangle`` or a ``Trickle`` (processed, then answered slowly: see ``Trickle``).
    """

    # Seconds every request takes at the server, its own work included: the answer leaves at
    # arrival + latency (a fault reply too; "timeout" waits its timeout_seconds after that).
    latency: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    rate_limit_rate: float = 0.0
    # History answers processed, then made unreadable (one of unreadable_kinds at random).
    unreadable_rate: float = 0.0
    unreadable_kinds: tuple[str, ...] = UNREADABLE_KINDS
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
        if kind not in wire.PATH_KINDS:
            raise ValueError(f"unknown path kind {kind!r}; one of {', '.join(wire.PATH_KINDS)}")
        with self._lock:
            self._scripts.setdefault(kind, collections.deque()).extend(steps)

    def pending(self, kind: str) -> int:
        """How many queued one-shot outcomes of ``kind`` no request has taken yet."""
        with self._lock:
            return len(self._scripts.get(kind, ()))

    def next_history_raw(
        self, body: bytes | None, status: int | None = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Serve these bytes (and headers) as the next history response."""
        self.script("history", [Raw(status=status, body=body, headers=tuple(headers))])

    def clear(self) -> None:
        """Back to a fault-free simulator."""
        with self._lock:
            self._scripts.clear()
            self.latency = self.error_rate = self.timeout_rate = self.rate_limit_rate = 0.0
            self.unreadable_rate = 0.0

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
            if kind == "history" and self.unreadable_rate and self._rng.random() < self.unreadable_rate:
                return Mangle(self._rng.choice(self.unreadable_kinds))
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


def gateway_error_after_processing(status: int = 504) -> Raw:
    """A step that lets the platform process the request, then answers with a gateway's HTML error
    page: the client cannot tell whether (or how) the request was judged."""
    phrase = wire.REASONS.get(status, b"Error").decode()
    page = wire.HTML_ERROR.format(code=status, phrase=phrase).encode()
    return Raw(status=status, body=page, headers=wire.HTML_HEADERS, process=True)
