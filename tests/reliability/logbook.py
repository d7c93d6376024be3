"""Everything the test session logged, kept so one final test can search it for secrets.

Sources fed in:
* every test's captured stdout, stderr and ``logging`` records (conftest hook on each report),
* a root ``logging`` handler installed for the whole session (catches records even when
  pytest's capture is off, ``-s``),
* the stdout/stderr of every subprocess a test starts through ``record_process_output``,
* anything else a test passes to ``record``.

Secret values come from ``secret.known_values()`` (every ``Secret`` built in this process and
every token passed to ``secret.register``) plus ``add_secret`` for values only a subprocess saw.
The registry forgets replaced tokens (after its grace list), so ``remember_secrets`` keeps what it
held at each test report (conftest hook): a token replaced more than ``secret.GRACE`` times within
one test is not searched for.

Under pytest-xdist every worker is a process with its own logbook and its own secret registry: each
worker hands both over at its end (``export``), and the controller takes them in (``merge``) and
searches all of them together, every secret of every worker against every worker's output.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Final

from sync_worker import secret

# Sources of deliberate probes (tests of the logbook itself): never part of what is judged.
PROBE: Final = "probe:"
_lock = threading.Lock()
_chunks: list[tuple[str, str]] = []
_extra_secrets: set[str] = set()


def record(source: str, text: str) -> None:
    if text:
        with _lock:
            _chunks.append((source, text))


def record_process_output(name: str, stdout: str | bytes | None, stderr: str | bytes | None) -> None:
    for stream, data in (("stdout", stdout), ("stderr", stderr)):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        if text:
            record(f"{name}:{stream}", text)


def add_secret(value: str) -> None:
    # Same threshold as secret.Secret: shorter values are ordinary substrings.
    if len(value) >= 4:
        with _lock:
            _extra_secrets.add(value)


def remember_secrets() -> None:
    """Keep every value the secret registry holds now (it forgets replaced tokens)."""
    held = secret.known_values()
    with _lock:
        _extra_secrets.update(held)


def secrets() -> frozenset[str]:
    with _lock:
        extra = frozenset(_extra_secrets)
    return secret.known_values() | extra


def chunks() -> list[tuple[str, str]]:
    with _lock:
        return list(_chunks)


def total_chars() -> int:
    with _lock:
        return sum(len(t) for _, t in _chunks)


def export() -> dict[str, list[Any]]:
    """This process's logbook and every secret value it knows, as plain lists (xdist ships them)."""
    with _lock:
        chunks_now = [[source, text] for source, text in _chunks]
    return {"chunks": chunks_now, "secrets": sorted(secrets())}


def merge(exported: dict[str, list[Any]], origin: str) -> None:
    """Take in another process's ``export``: its chunks (sources prefixed ``origin``) and its secrets."""
    for source, text in exported["chunks"]:
        record(f"{source} [{origin}]", text)
    for value in exported["secrets"]:
        add_secret(value)


def find_leaks(values: Iterable[str] | None = None, *, probes: bool = False) -> list[tuple[str, str, str]]:
    """Return (source, secret prefix, context) for every occurrence of a secret value (default: every
    one known). Chunks of deliberate probes (sources starting ``PROBE``) are judged only with ``probes``."""
    found: list[tuple[str, str, str]] = []
    wanted = sorted(values if values is not None else secrets())
    for source, text in chunks():
        if source.startswith(PROBE) and not probes:
            continue
        for value in wanted:
            at = text.find(value)
            if at >= 0:
                context = text[max(0, at - 60) : at].replace(value, "<secret>")
                found.append((source, value[:2] + "...", context))
    return found


class SessionHandler(logging.Handler):
    """Formats every record (with exception text) into the logbook."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record_: logging.LogRecord) -> None:
        try:
            record("logging", self.format(record_))
        except Exception:  # a broken record must not break the test that logged it
            self.handleError(record_)
