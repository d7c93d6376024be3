"""`sync-worker demo` (what `make run` does) runs clean with nothing set up."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sync_worker demo ARGS` with no SYNC_/THINGSPACE_/PG variable set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "THINGSPACE_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_demo_runs_clean_without_any_configuration() -> None:
    """The demo needs no variables or credentials, stores every delivered message, and exits 0."""
    proc = _demo()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "demo OK" in out
    assert out.count("every message stored") == 3
    assert "MISMATCH" not in out
    # The status table and the analyst query both printed rows for the three accounts.
    assert "sync-worker status:" in out and "succeeded" in out
    assert "analyst query" in out and "sms_daily_device_counts" in out
    assert "flagged malformed" in out and " 0 flagged malformed" not in out
    assert "Traceback" not in proc.stderr


def test_demo_explains_its_numbers() -> None:
    """Each number a newcomer could misread is explained: received minus stored is the count of
    messages received again (the exact repeats the last lines name), not a loss; what flagged malformed
    and the status table's lag mean."""
    out = _demo().stdout
    counts = re.search(r"(\d+) messages received, (\d+) stored, (\d+) flagged malformed", out)
    assert counts is not None, out
    received, stored = int(counts.group(1)), int(counts.group(2))
    assert f"({received - stored} received again and already stored" in out
    collapsed = sum(int(n) for n in re.findall(r"\((\d+) exact repeat\(s\) split across two blocks", out))
    assert collapsed == received - stored
    assert "flagged malformed: stored as sent, with what is wrong in the column problems" in out
    assert "lag s: seconds since the account's last successful sync" in out


def test_push_demo_runs_clean_and_stores_pushed_and_requeued_messages_once() -> None:
    """`demo --push`: every message pushed, the lost answers' messages polled, each stored once, exit 0."""
    proc = _demo("--push")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "demo OK" in out
    assert out.count("every message stored once") == 2
    assert "7 messages back in the history queue" in out
    assert "7 messages received, 0 new" in out
    # The queued and distinct counts are explained on each account's line.
    assert out.count("queued, ") == 2 and "distinct (an exact repeat is the same message)" in out
    assert "polling them again adds nothing" in out
    assert "MISMATCH" not in out
    assert "Traceback" not in proc.stderr
