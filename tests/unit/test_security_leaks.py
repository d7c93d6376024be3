"""The suite-wide leak check: no secret value in anything any test logged or printed.

conftest.py moves this test to the end of the run and feeds every test's captured output,
every logging record and every subprocess's output into tests/reliability/logbook.py.
"""

from __future__ import annotations

import logging
import uuid

from tests.reliability import logbook


def test_logbook_captures_logging_records() -> None:
    """A record logged through the standard logging module reaches the session logbook."""
    canary = f"logbook-canary-{uuid.uuid4().hex}"
    logging.getLogger("sync_worker.test").info("probe %s", canary)
    assert any(canary in text for _, text in logbook.chunks())


def test_find_leaks_spots_a_secret_value() -> None:
    """find_leaks reports a chunk containing a secret value and ignores one that does not."""
    value = f"pw-{uuid.uuid4().hex}"
    logbook.record("probe:clean", "nothing to see")
    assert logbook.find_leaks([value]) == []
    logbook.record("probe:dirty", f"password={value}")
    leaks = logbook.find_leaks([value])
    assert [source for source, _, _ in leaks] == ["probe:dirty"]
    # The report names the source without repeating the value.
    assert all(value not in context for _, _, context in leaks)


def test_no_secret_in_anything_the_suite_logged() -> None:
    """No client secret, password, bearer or session token appears in any captured log or output."""
    # Remove the deliberate probe above so only real output is judged.
    with logbook._lock:
        logbook._chunks[:] = [c for c in logbook._chunks if not c[0].startswith("probe:")]
    values = logbook.secrets()
    leaks = logbook.find_leaks(values)
    assert not leaks, "secret values leaked into: " + ", ".join(sorted({s for s, _, _ in leaks}))
    print(f"leak check: {len(values)} secret values searched in {logbook.total_chars()} characters")
