"""A wrapper that keeps credential values out of logs, errors and ``repr``.

Every ``Secret`` created in the process registers its value, and the tokens obtained at run time
are registered with ``register``, so the logging pipeline can scrub them from any event as a second
line of defence.

The registry is bounded: a daemon renews its bearer token every hour and its session whenever the
platform ends it, for months. A token leaves when the cache holding it replaces or drops it
(``replace`` / ``unregister``) and is still scrubbed while it is among the last ``GRACE`` values that
left: the replaced bearer token stays valid at the vendor for the renewal margin, and a thread that
read it just before the renewal may still log an error carrying it. Each kind of value also has a
hard cap (oldest out first) in case something registers values that nothing ever replaces.
``scrub`` uses one compiled pattern, rebuilt only when the registry changes.
"""

from __future__ import annotations

import re
import threading
from typing import Final

_REDACTED: Final = "**********"
# Very short values would make the log scrubber redact ordinary words.
MIN_LENGTH: Final = 4
# Values of Secret objects (configured credentials, cached tokens) kept at most; a process holds a
# handful, so reaching this means something builds Secrets in a loop.
MAX_HELD: Final = 256
# Tokens passed to ``register`` kept at most: every renewal replaces the previous token, so only a
# token its cache never saw (a malformed token answer) stays until this cap pushes it out.
MAX_REGISTERED: Final = 256
# Values that left the registry (replaced, dropped, pushed out by a cap) still scrubbed: the newest.
GRACE: Final = 32

_lock = threading.Lock()
# Insertion-ordered sets (dict keys): the oldest entry is the first.
_held: dict[str, None] = {}
_registered: dict[str, None] = {}
_retired: dict[str, None] = {}
_pattern: re.Pattern[str] | None = None
_shortest = 0


class Secret:
    """An opaque string; ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= MIN_LENGTH:
            with _lock:
                _add(_held, value, MAX_HELD)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({_REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


def register(value: str) -> None:
    """Mark a value obtained at run time (a bearer or session token) as secret."""
    if len(value) >= MIN_LENGTH:
        with _lock:
            _add(_registered, value, MAX_REGISTERED)


def unregister(value: Secret | str | None) -> None:
    """``value`` is no longer in use (its cache dropped it): scrubbed only while among the last ``GRACE``."""
    text = value.reveal() if isinstance(value, Secret) else value
    if text is not None and len(text) >= MIN_LENGTH:
        with _lock:
            _retire(text)


def replace(old: Secret | str | None, new: str) -> None:
    """A cache replaced ``old`` (None: it held nothing) with the token ``new``."""
    text = old.reveal() if isinstance(old, Secret) else old
    with _lock:
        if text is not None and text != new and len(text) >= MIN_LENGTH:
            _retire(text)
        if len(new) >= MIN_LENGTH:
            _add(_registered, new, MAX_REGISTERED)


def known_values() -> frozenset[str]:
    """Every value ``scrub`` redacts now, the grace list included."""
    with _lock:
        return frozenset(_held) | frozenset(_registered) | frozenset(_retired)


def scrub(text: str) -> str:
    """Replace every known secret value inside ``text``."""
    with _lock:
        pattern, shortest = _compiled(), _shortest
    if pattern is None or len(text) < shortest:
        return text
    return pattern.sub(_REDACTED, text)


def _add(tier: dict[str, None], value: str, cap: int) -> None:
    global _pattern  # noqa: PLW0603  # the process-wide registry's cached pattern
    known = value in _held or value in _registered or _retired.pop(value, "absent") is None
    # Registered again (a secret file read again at each login): the newest, last out.
    tier.pop(value, None)
    tier[value] = None
    if not known:
        _pattern = None
    while len(tier) > cap:
        oldest = next(iter(tier))
        del tier[oldest]
        _to_grace(oldest)


def _retire(value: str) -> None:
    global _pattern  # noqa: PLW0603  # the process-wide registry's cached pattern
    in_held = _held.pop(value, "absent") is None
    in_registered = _registered.pop(value, "absent") is None
    if in_held or in_registered:
        _to_grace(value)
        _pattern = None


def _to_grace(value: str) -> None:
    global _pattern  # noqa: PLW0603  # the process-wide registry's cached pattern
    if value in _held or value in _registered:
        return  # still in use under its other kind
    _retired.pop(value, None)
    _retired[value] = None
    while len(_retired) > GRACE:
        del _retired[next(iter(_retired))]
    _pattern = None


def _compiled() -> re.Pattern[str] | None:
    """The pattern matching every known value; the caller holds ``_lock``."""
    global _pattern, _shortest  # noqa: PLW0603  # rebuilt only when the registry changed
    if _pattern is None:
        values = set(_held) | set(_registered) | set(_retired)
        if not values:
            _shortest = 0
            return None
        # Longest first: where one secret contains another, the whole of the longer one goes.
        ordered = sorted(values, key=lambda v: (-len(v), v))
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))
        _shortest = len(ordered[-1])
    return _pattern
