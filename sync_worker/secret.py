"""A wrapper that keeps credential values out of logs, errors and ``repr``.

Every ``Secret`` created in the process registers its value so the logging
pipeline can scrub it from any event as a second line of defence.
"""

from __future__ import annotations

import threading
from typing import Final

_REDACTED: Final = "**********"
_lock = threading.Lock()
_known: set[str] = set()


class Secret:
    """An opaque string; ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Very short values would make the log scrubber redact ordinary words.
        if len(value) >= 4:
            with _lock:
                _known.add(value)

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
    if len(value) >= 4:
        with _lock:
            _known.add(value)


def known_values() -> frozenset[str]:
    with _lock:
        return frozenset(_known)


def scrub(text: str) -> str:
    """Replace every known secret value inside ``text``."""
    for value in known_values():
        if value in text:
            text = text.replace(value, _REDACTED)
    return text
