"""Shared fixtures live in tests/fixtures/, one module per real part they start."""

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests.reliability import logbook

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.simulator",
]


# --- session-wide log capture for the secret-leak check (tests/reliability/logbook.py) ---

_LEAK_CHECK = "test_no_secret_in_anything_the_suite_logged"
_WORKER_LOGBOOKS = "sync-worker-logbooks"
_session_handler = logbook.SessionHandler()


class _WorkerLogbooks:
    """In the xdist controller: every worker's logbook and secrets, taken in as the worker ends."""

    def __init__(self) -> None:
        self.lost: list[str] = []

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        exported = getattr(node, "workeroutput", {}).get("logbook")
        name = str(node.gateway.id)
        if exported is None:
            self.lost.append(name)  # a crashed worker: what it logged cannot be searched
        else:
            logbook.merge(exported, name)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two test processes per core (``PYTEST_XDIST_AUTO_NUM_WORKERS`` still overrides).

    Most of the suite's wall time is waiting (simulated latency, leases, intervals, subprocesses,
    Postgres): on 2 cores its own processes kept about one core busy (load about 1 through a
    two-process run), so a second process per core runs while the first waits."""
    named = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if named:
        return int(named)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 * cores


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_WorkerLogbooks(), _WORKER_LOGBOOKS)
    root = logging.getLogger()
    root.addHandler(_session_handler)
    # INFO records are where a leaked token would most likely be; the default WARNING hides them.
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_session_handler)


@pytest.fixture(autouse=True)
def _logging_ends_with_its_test() -> Iterator[None]:
    # A test that runs a command (cli.main) points logging at pytest's captured stderr, which is
    # closed once the test ends: a later test in the same process would log into a closed file.
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


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
    config = session.config
    if hasattr(config, "workerinput"):
        # An xdist worker: its logbook and secrets go to the controller (xdist sends workeroutput
        # after this hook), which searches every worker's output for every worker's secrets.
        config.workeroutput["logbook"] = logbook.export()  # type: ignore[attr-defined]
        return
    # Output of the leak check itself (and teardown after it) is checked here too; under xdist,
    # here is where every worker's logbook is searched at once.
    leaks = logbook.find_leaks()
    collector = config.pluginmanager.get_plugin(_WORKER_LOGBOOKS)
    lost = collector.lost if isinstance(collector, _WorkerLogbooks) else []
    if leaks or lost:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for source, prefix, _ in leaks:
                reporter.write_line(f"SECRET LEAK: a secret ({prefix}) appeared in {source}", red=True)
            for name in lost:
                reporter.write_line(f"SECRET LEAK CHECK INCOMPLETE: worker {name} sent no logbook", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
