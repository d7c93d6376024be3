"""Issue 21 item 8: an answer that trickles in a byte at a time cannot keep a call or a run alive.

requests' read timeout bounds each socket read; the client's total deadline per exchange (connect,
headers and body together) and the run budget are kept by cutting the connection. The simulator's
``Trickle`` fault processes the request, then writes its answer one byte every 0.2 s for ever.
Every bound is an upper bound measured with ``time.monotonic``; nothing here sleeps.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import urllib3.util.connection

from sync_worker import app, errors, retry, status
from sync_worker import db as database
from sync_worker import simulator as sim_mod
from tests.fakes import FakeTime
from tests.integration.test_client_http import make_client
from tests.integration.test_sync import ACCOUNT, backlog, make_settings

T = TypeVar("T")
# What the cut, the error path and a loaded 2-core machine may add to a deadline.
SLACK = 0.75
TRICKLE = sim_mod.Trickle(interval=0.2)

pytestmark = pytest.mark.timeout(60)


def timed(call: Callable[[], T]) -> tuple[T | BaseException, float]:
    started = time.monotonic()
    try:
        value: T | BaseException = call()
    except Exception as exc:
        value = exc
    return value, time.monotonic() - started


@pytest.fixture
def tcp_connects(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every TCP connection urllib3 opens from now on (its address), in order."""
    opened: list[object] = []
    original = urllib3.util.connection.create_connection

    def counting(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        opened.append(address)
        return original(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return opened


def _one_attempt(fake_time: FakeTime) -> retry.RetryPolicy:
    return retry.RetryPolicy(max_attempts=1, sleep=fake_time.sleep, clock=fake_time.clock)


@pytest.mark.parametrize("head", [False, True], ids=["body", "headers"])
def test_a_trickled_history_answer_ends_at_the_total_deadline_on_a_new_connection(
    simulator: sim_mod.Simulator, head: bool, tcp_connects: list[object]
) -> None:
    """A history answer trickling for ever (body, or headers too) raises a transient timeout within
    the 1 s total deadline, and the next request goes out on a new connection, never the cut one."""
    simulator.seed(ACCOUNT, 150)  # 202 blocks: nothing leaves the queue unasked
    fake_time = FakeTime()
    with make_client(simulator, fake_time, total_timeout=1.0, retry=_one_attempt(fake_time)) as api:
        assert len(api.sms.list_devices_sms_messages(ACCOUNT).messages) == 100  # token, login, warm
        connections = len(tcp_connects)
        simulator.faults.script("history", [sim_mod.Trickle(interval=0.2, head=head)])
        raised, elapsed = timed(lambda: api.sms.list_devices_sms_messages(ACCOUNT))
        assert isinstance(raised, errors.ApiTransientError), raised
        assert "timed out" in str(raised) and "total timeout" in str(raised)
        assert 1.0 <= elapsed <= 1.0 + SLACK
        page = api.sms.list_devices_sms_messages(ACCOUNT)
        assert len(page.messages) == 100
        assert len(tcp_connects) == connections + 1
    assert simulator.stats.faults.get("trickle") == 1


def test_the_run_deadline_cuts_a_trickled_answer_too(simulator: sim_mod.Simulator) -> None:
    """With a run deadline nearer than the total timeout, a trickled answer ends at the run deadline."""
    simulator.seed(ACCOUNT, 150)  # 202 blocks: nothing leaves the queue unasked
    with make_client(simulator, FakeTime(), retry=retry.RetryPolicy(max_attempts=1)) as api:
        api.sms.list_devices_sms_messages(ACCOUNT, deadline=time.monotonic() + 30)  # token, login
        simulator.faults.script("history", [TRICKLE])
        deadline = time.monotonic() + 1.0
        raised, _ = timed(lambda: api.sms.list_devices_sms_messages(ACCOUNT, deadline=deadline))
        assert isinstance(raised, errors.ApiTransientError), raised
        assert "run budget" in str(raised)
        assert deadline <= time.monotonic() <= deadline + SLACK
        # Past the run deadline nothing is sent at all.
        history_requests = simulator.stats.history_requests
        raised, elapsed = timed(lambda: api.sms.list_devices_sms_messages(ACCOUNT, deadline=deadline))
        assert isinstance(raised, errors.ApiTransientError) and "not sent" in str(raised)
        assert simulator.stats.history_requests == history_requests and elapsed < SLACK


def test_a_body_over_the_cap_is_unreadable_and_its_connection_is_dropped(
    simulator: sim_mod.Simulator, tcp_connects: list[object]
) -> None:
    """A 202 whose body is over max_body_bytes is unreadable: retried, then a malformed block keeping
    its first bytes, each oversized answer's connection closed (never back to the pool half-read)."""
    simulator.seed(ACCOUNT, 150)  # 202 blocks: nothing leaves the queue unasked
    big = b'{"messages":[' + b" " * 150_000 + b'],"hasMoreData":true}'
    location = [("Location", f"/sms/{ACCOUNT}/history?next=Tok2"), ("Content-Type", "application/json")]
    fake_time = FakeTime()
    policy = retry.RetryPolicy(max_attempts=2, sleep=fake_time.sleep, clock=fake_time.clock)
    with make_client(simulator, fake_time, max_body_bytes=100_000, retry=policy) as api:
        assert len(api.sms.list_devices_sms_messages(ACCOUNT).body) < 100_000  # a real block fits
        connections = len(tcp_connects)
        simulator.faults.next_history_raw(big, 202, location)
        simulator.faults.next_history_raw(big, 202, location)
        with pytest.raises(errors.MalformedBlockError) as info:
            api.sms.list_devices_sms_messages(ACCOUNT)
        assert "larger than 100000 bytes" in info.value.problem
        assert info.value.body == big[:100_000] and info.value.next_token == "Tok2"
        assert len(api.sms.list_devices_sms_messages(ACCOUNT).messages) == 100
        assert len(tcp_connects) == connections + 2


def test_a_trickled_login_answer_counts_as_an_unknown_outcome(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """A login the platform processed but whose answer trickles ends at the total deadline, as an
    unknown outcome the guard counts (cleared by the next successful login)."""
    backlog(simulator, ACCOUNT, 5)
    simulator.faults.script("login", [TRICKLE])
    settings = make_settings(simulator, db_url, [ACCOUNT], THINGSPACE_TOTAL_TIMEOUT="1")
    result, elapsed = timed(lambda: app.sync_once(settings))
    assert not isinstance(result, BaseException)
    assert result.exit_code == 1 and elapsed <= 1.0 + 3.0  # the pass's own start-up included
    assert simulator.stats.login_attempts == 1
    guard = app.login_guard(settings, database.connector(db_url))
    state = guard.state()
    assert (state.failures, state.last_outcome) == (1, "unknown")
    assert app.sync_once(settings).exit_code == 0
    assert guard.state().failures == 0


def test_a_run_whose_answer_trickles_ends_within_its_budget_as_failed(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """With the budget (2 s) far below the total timeout, a run whose history answer trickles for ever
    ends within its budget, recorded as failed with the budget named; the next run drains the queue."""
    sent = backlog(simulator, ACCOUNT, 150)
    simulator.faults.script("history", [TRICKLE])
    settings = make_settings(simulator, db_url, [ACCOUNT], SYNC_RUN_BUDGET_SECONDS="2")
    result, _ = timed(lambda: app.sync_once(settings))
    assert not isinstance(result, BaseException)
    (run,) = result.accounts
    assert run.outcome == "failed" and run.error is not None and "run budget" in run.error
    assert run.duration_seconds <= 2.0 + SLACK
    with database.connector(db_url)() as conn:
        (state,) = [s for s in status.account_status(conn) if s.account_name == ACCOUNT]
    assert state.last_run_outcome == "failed" and state.row_count == 0
    assert app.sync_once(settings).exit_code == 0
    with database.connector(db_url)() as conn:
        assert conn.execute("SELECT count(*) FROM sms_history").fetchone() == (len(sent),)
