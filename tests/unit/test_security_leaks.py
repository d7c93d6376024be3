"""The suite-wide leak check: no secret value in anything any test logged or printed.

conftest.py moves this test to the end of the run and feeds every test's captured output,
every logging record and every subprocess's output into tests/reliability/logbook.py.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

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
    assert logbook.find_leaks([value], probes=True) == []
    logbook.record("probe:dirty", f"password={value}")
    leaks = logbook.find_leaks([value], probes=True)
    assert [source for source, _, _ in leaks] == ["probe:dirty"]
    # The report names the source without repeating the value.
    assert all(value not in context for _, _, context in leaks)
    # The suite-wide search leaves deliberate probes out.
    assert logbook.find_leaks([value]) == []


def test_a_workers_logbook_is_searched_with_every_workers_secrets() -> None:
    """A secret only another process (an xdist worker) knew is found in output only this one logged,
    and a secret known here is found in output another process logged: export/merge join both."""
    here, there = f"pw-here-{uuid.uuid4().hex}", f"pw-there-{uuid.uuid4().hex}"
    logbook.record("probe:local", f"token={there}")
    worker: dict[str, list[Any]] = {"chunks": [["probe:remote", f"password={here}"]], "secrets": [there]}
    logbook.merge(worker, "gw9")
    assert there in logbook.secrets()
    assert any(source == "probe:remote [gw9]" for source, _ in logbook.chunks())
    leaks = logbook.find_leaks([here, there], probes=True)
    assert {source for source, _, _ in leaks} == {"probe:local", "probe:remote [gw9]"}
    exported = logbook.export()
    assert ["probe:local", f"token={there}"] in exported["chunks"] and there in exported["secrets"]


def test_no_secret_in_anything_the_suite_logged() -> None:
    """No client secret, password, bearer or session token appears in any captured log or output."""
    # Deliberate probes (above) are left out: only real output is judged. Under xdist this searches
    # this worker's logbook; the controller searches every worker's together (tests/conftest.py).
    values = logbook.secrets()
    leaks = logbook.find_leaks(values)
    assert not leaks, "secret values leaked into: " + ", ".join(sorted({s for s, _, _ in leaks}))
    print(f"leak check: {len(values)} secret values searched in {logbook.total_chars()} characters")
