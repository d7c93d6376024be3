"""Shared fixtures live in tests/fixtures/, one module per real part they start."""

import logging

import pytest

from tests.reliability import logbook

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.simulator",
]


# --- session-wide log capture for the secret-leak check (tests/reliability/logbook.py) ---

_LEAK_CHECK = "test_no_secret_in_anything_the_suite_logged"
_session_handler = logbook.SessionHandler()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_session_handler)
    # INFO records are where a leaked token would most likely be; the default WARNING hides them.
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_session_handler)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # The leak check must see every other test's output, so it runs last.
    last = [item for item in items if item.name == _LEAK_CHECK]
    if last:
        items[:] = [item for item in items if item.name != _LEAK_CHECK] + last


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    logbook.remember_secrets()
    for title, content in report.sections:
        logbook.record(f"{report.nodeid} {title}", content)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Output of the leak check itself (and teardown after it) is checked here too.
    leaks = logbook.find_leaks()
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for source, prefix, _ in leaks:
                reporter.write_line(f"SECRET LEAK: a secret ({prefix}) appeared in {source}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
