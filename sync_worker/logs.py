"""Logging: structlog, JSON lines off a terminal, a readable console on one.

Nothing is configured at import time; the CLI calls ``configure()`` once it
knows the settings. Every event passes through ``scrub_secrets`` last, so a
credential that slipped into a message or a field is still redacted.
Standard-library loggers (APScheduler, urllib3, psycopg) are routed through
the same pipeline, and both reach the stream through one writer: each event is
written whole, in one call under one lock, so concurrent events never share a line
(structlog's printer writes the message and its newline in two calls, under a lock
the stdlib handler does not know).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

from sync_worker import secret

LEVELS: Final[Mapping[str, int]] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_lock = threading.Lock()
_handler: logging.Handler | None = None
_writer: _LineWriter | None = None


class _LineWriter:
    """The one writer of a log stream: a line and its newline in one write, under one lock."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class _StructlogLogger:
    """What structlog hands its rendered events to: the stream's writer."""

    def __init__(self, writer: _LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _WriterHandler(logging.Handler):
    """The stdlib side: records rendered by the handler's formatter, written by the stream's writer."""

    def __init__(self, writer: _LineWriter, level: int) -> None:
        super().__init__(level)
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write_line(self.format(record))
        except Exception:
            # As StreamHandler does: a failed log write must not fail the code that logged.
            self.handleError(record)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return secret.scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {_scrub_value(k): _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub_value(v) for v in value]
    if isinstance(value, bytes):
        return secret.scrub(value.decode("utf-8", "replace"))
    # Rendering an arbitrary object later could reveal what its __str__ holds.
    return secret.scrub(str(value))


def scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every registered secret value in every field."""
    for key in list(event_dict):
        event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


def _resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "console" if callable(isatty) and isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    return fmt


def configure(fmt: str = "auto", level: str = "INFO", stream: TextIO | None = None) -> str:
    """Configure structlog and the stdlib root logger; safe to call again (the last call wins).

    Returns the format in effect, ``"json"`` or ``"console"`` (``auto`` resolved for ``stream``).
    """
    global _handler, _writer  # one process-wide logging configuration
    out = sys.stdout if stream is None else stream
    numeric = LEVELS.get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    rendered = _resolve_format(fmt, out)
    renderer: Any
    if rendered == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text before scrubbing so their secrets are scrubbed too.
        structlog.processors.format_exc_info,
    ]
    with _lock:
        writer = _writer if _writer is not None and _writer.stream is out else _LineWriter(out)
        structlog.configure(
            processors=[*shared, scrub_secrets, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=lambda *_args: _StructlogLogger(writer),
            cache_logger_on_first_use=False,
        )
        root = logging.getLogger()
        if _handler is not None:
            root.removeHandler(_handler)
        # Library chatter below WARNING is noise unless the operator asked for DEBUG.
        handler = _WriterHandler(
            writer, numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING)
        )
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    scrub_secrets,
                    renderer,
                ],
            )
        )
        root.addHandler(handler)
        # Only ever lowered: other handlers on the root (test capture) keep what they asked for.
        if root.level == logging.NOTSET or root.level > handler.level:
            root.setLevel(handler.level)
        _handler, _writer = handler, writer
    return rendered


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; ``name`` becomes the ``logger`` field."""
    log = structlog.get_logger()
    return log.bind(logger=name) if name else log


@contextlib.contextmanager
def bound_account(account: str) -> Iterator[None]:
    """Every event logged inside (in this thread or context) carries ``account``."""
    with structlog.contextvars.bound_contextvars(account=account):
        yield
