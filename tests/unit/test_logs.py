"""logs.configure(): JSON lines off a terminal, console on one, level filtering, secret scrubbing."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from sync_worker import logs, secret


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_iso_utc_timestamps() -> None:
    """Off a terminal each event is one JSON object with level, event and an ISO-8601 UTC timestamp."""
    out = io.StringIO()
    logs.configure("auto", "INFO", out)
    logs.get_logger("t").info("block_committed", inserted=3)
    (event,) = lines(out)
    assert event["event"] == "block_committed" and event["inserted"] == 3 and event["level"] == "info"
    stamp = str(event["timestamp"])
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_console_renderer_on_a_terminal() -> None:
    """On a terminal the output is the readable console format, not JSON."""
    out = TtyStream()
    logs.configure("auto", "INFO", out)
    logs.get_logger().info("hello_console", account="abc")
    text = out.getvalue()
    assert "hello_console" in text and "account=abc" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_explicit_json_wins_over_a_terminal() -> None:
    """SYNC_LOG_FORMAT=json renders JSON even on a terminal."""
    out = TtyStream()
    logs.configure("json", "INFO", out)
    logs.get_logger().info("x")
    assert lines(out)[0]["event"] == "x"


def test_level_filtering() -> None:
    """Events below the configured level are dropped, at and above it are kept."""
    out = io.StringIO()
    logs.configure("json", "WARNING", out)
    log = logs.get_logger()
    log.info("dropped")
    log.warning("kept")
    assert [e["event"] for e in lines(out)] == ["kept"]


def test_secrets_are_scrubbed_everywhere() -> None:
    """A registered secret is redacted from the message, nested fields, objects and tracebacks."""
    token = "session-token-abc123"
    secret.register(token)
    out = io.StringIO()
    logs.configure("json", "INFO", out)
    log = logs.get_logger()
    log.info(f"login with {token}", nested={"k": [token, 1]}, obj=ValueError(token))
    try:
        raise RuntimeError(f"failed: {token}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert token not in text
    assert text.count("**********") >= 4
    assert lines(out)[0]["nested"] == {"k": ["**********", 1]}


def test_stdlib_loggers_are_routed_and_scrubbed() -> None:
    """Library warnings via logging reach our stream through the same renderer and scrubber."""
    secret.register("lib-secret-value-9")
    out = io.StringIO()
    logs.configure("json", "INFO", out)
    logging.getLogger("apscheduler.test").warning("routed warning")
    (event,) = lines(out)
    assert (event["event"], event["logger"], event["level"]) == (
        "routed warning",
        "apscheduler.test",
        "warning",
    )
    # Formatted directly: a real emit would also reach pytest's raw capture (and the suite's leak check).
    handler = logging.getLogger().handlers[-1]
    record = logging.LogRecord(
        "urllib3", logging.WARNING, __file__, 1, "leaked %s", ("lib-secret-value-9",), None
    )
    assert json.loads(handler.format(record))["event"] == "leaked **********"


def test_configure_is_idempotent() -> None:
    """Configuring twice does not duplicate output; the last configuration wins."""
    first, second = io.StringIO(), io.StringIO()
    logs.configure("json", "INFO", first)
    logs.configure("json", "INFO", second)
    logs.get_logger().info("once")
    logging.getLogger("lib").warning("once-lib")
    assert first.getvalue() == ""
    assert [e["event"] for e in lines(second)] == ["once", "once-lib"]


def test_bound_account_adds_the_account() -> None:
    """Inside bound_account every event carries the account, and not after it."""
    out = io.StringIO()
    logs.configure("json", "INFO", out)
    with logs.bound_account("0252012345-00001"):
        logs.get_logger().info("inside")
    logs.get_logger().info("outside")
    inside, outside = lines(out)
    assert inside["account"] == "0252012345-00001"
    assert "account" not in outside


def test_bad_level_or_format_is_refused() -> None:
    """Unknown levels and formats raise instead of silently logging everything."""
    with pytest.raises(ValueError):
        logs.configure("json", "LOUD", io.StringIO())
    with pytest.raises(ValueError):
        logs.configure("xml", "INFO", io.StringIO())


def test_import_configures_nothing() -> None:
    """Importing the package (logs, cli) leaves logging unconfigured: no import-time side effects."""
    code = (
        "import logging, structlog\n"
        "from sync_worker import logs, cli\n"
        "assert not structlog.is_configured()\n"
        "assert not logging.getLogger().handlers\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_concurrent_events_from_structlog_and_stdlib_are_whole_json_lines(tmp_path: Path) -> None:
    """Threads logging through structlog and psycopg's stdlib logger at once: every line is one JSON event."""
    threads_per_side, events_per_thread = 4, 300
    path = tmp_path / "log.jsonl"
    # Switching threads as often as the interpreter can is what makes a torn line likely if one can happen.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with path.open("w", encoding="utf-8") as stream:
            logs.configure("json", "INFO", stream)
            start = threading.Barrier(threads_per_side * 2)

            def structlog_side(n: int) -> None:
                log = logs.get_logger("sync_worker.sync")
                start.wait()
                for i in range(events_per_thread):
                    # Longer than the text layer's 8 KiB chunk: written through at once, as a traceback is.
                    log.error("account_run", thread=n, i=i, exception="x" * 9000)

            def stdlib_side(n: int) -> None:
                driver = logging.getLogger("psycopg")
                start.wait()
                for i in range(events_per_thread):
                    driver.warning("error ignored terminating %s %d: %s", n, i, "y" * 200)

            workers = [threading.Thread(target=structlog_side, args=(n,)) for n in range(threads_per_side)]
            workers += [threading.Thread(target=stdlib_side, args=(n,)) for n in range(threads_per_side)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        sys.setswitchinterval(interval)
    raw = path.read_text(encoding="utf-8").split("\n")
    assert raw[-1] == ""  # the stream ends with a newline, nothing half-written after it
    events = [json.loads(line) for line in raw[:-1]]
    assert len(events) == threads_per_side * 2 * events_per_thread
    assert sum(e["event"] == "account_run" for e in events) == threads_per_side * events_per_thread
    assert sum(e.get("logger") == "psycopg" for e in events) == threads_per_side * events_per_thread
