"""Issue 21 item 8: an answer that trickles in a byte at a time cannot keep a call or a run alive.

requests' read timeout bounds each socket read; the client's total deadline per exchange (connect,
headers and body together) and the run budget are kept by cutting the connection. The simulator's
``Trickle`` fault (``endless``) processes the request, then writes its answer one byte every 0.2 s
for ever.
Every bound is an upper bound measured with ``time.monotonic``; nothing here sleeps.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import urllib3.util.connection

from sync_worker import app, errors, exitcodes, gate, retry, status, store, sync
from sync_worker import db as database
from sync_worker import simulator as sim_mod
from tests.fakes import FakeTime
from tests.integration import test_sync
from tests.integration.test_client_http import make_client
from tests.integration.test_sync import ACCOUNT, backlog, make_settings

T = TypeVar("T")
# What the cut, the error path and a loaded 2-core machine may add to a deadline.
SLACK = 0.75
TRICKLE = sim_mod.Trickle(chunk=1, gap=0.2, endless=True)

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
        simulator.faults.script("history", [sim_mod.Trickle(chunk=1, gap=0.2, head=head, endless=True)])
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
    """A 202 whose body is over max_body_bytes is unreadable even when its first bytes are a whole
    block (a real block, then padding and junk past the cap): retried, then a failure that is never
    quarantined (only its first bytes were read, so its token is not followed), each oversized
    answer's connection closed (never back to the pool half-read)."""
    simulator.seed(ACCOUNT, 150)  # 202 blocks: nothing leaves the queue unasked
    location = [("Location", f"/sms/{ACCOUNT}/history?next=Tok2"), ("Content-Type", "application/json")]
    fake_time = FakeTime()
    policy = retry.RetryPolicy(max_attempts=2, sleep=fake_time.sleep, clock=fake_time.clock)
    with make_client(simulator, fake_time, max_body_bytes=100_000, retry=policy) as api:
        real = api.sms.list_devices_sms_messages(ACCOUNT).body
        assert len(real) < 100_000  # a real block fits
        # The first 100,000 bytes parse as that block; the whole does not.
        big = real + b" " * (100_000 - len(real)) + b"[not json]" * 5_000
        assert gate.read_envelope(big[:100_000]).messages
        connections = len(tcp_connects)
        simulator.faults.next_history_raw(big, 202, location)
        simulator.faults.next_history_raw(big, 202, location)
        with pytest.raises(errors.ResponseFormatError) as info:
            api.sms.list_devices_sms_messages(ACCOUNT)
        assert not isinstance(info.value, errors.MalformedBlockError)
        assert "larger than 100000 bytes" in str(info.value) and "byte for byte" in str(info.value)
        unreadable = info.value.__cause__
        assert isinstance(unreadable, errors.UnreadableAnswerError) and unreadable.attempts == 2
        assert unreadable.block.body == big[:100_000] and unreadable.block.next_token == "Tok2"
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


def _stored(db_url: str) -> int:
    with database.connector(db_url)() as conn:
        row = conn.execute("SELECT count(*) FROM sms_history").fetchone()
    assert row is not None
    return int(row[0])


def test_a_budget_reached_between_blocks_ends_the_run_as_succeeded_with_more_waiting(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """A budget that ends between two blocks after progress ends the run cleanly: succeeded with
    more_waiting and the budget note (also what status shows), block 2 committed but its next block
    never asked for (so not acknowledged); the next run resumes at that cursor, storing every message."""
    sent = backlog(simulator, ACCOUNT, 350)  # blocks of 100, 100, 100, 50
    deadline = time.monotonic() + 60.0

    def clock() -> float:
        # The run's clock reaches the budget once block 2 was answered; the client's (real) clock
        # never does, so no request is cut or refused: only the run's check between blocks ends it.
        return deadline if simulator.stats.history_requests >= 2 else time.monotonic()

    connect = database.connector(db_url)
    with test_sync.make_client(simulator) as api:
        result = sync.sync_account(api, ACCOUNT, store.PostgresStore(connect), deadline=deadline, clock=clock)
    assert (result.outcome, result.more_waiting, result.blocks, result.received) == (
        "succeeded",
        True,
        2,
        200,
    )
    assert result.error == sync.BUDGET_NOTE and result.error_kind is None and result.ok
    assert simulator.stats.history_requests == 2
    assert len(simulator.acknowledged(ACCOUNT)) == 100  # block 1 only
    with connect() as conn:
        assert store.get_cursor(conn, ACCOUNT) == simulator.issued_tokens(ACCOUNT)[1]
        (state,) = [s for s in status.account_status(conn) if s.account_name == ACCOUNT]
    assert (state.last_run_outcome, state.last_error) == ("succeeded", sync.BUDGET_NOTE)
    assert _stored(db_url) == 200
    with test_sync.make_client(simulator) as api:
        again = sync.sync_account(
            api, ACCOUNT, store.PostgresStore(connect), deadline=time.monotonic() + 60.0
        )
    assert (again.outcome, again.more_waiting, again.error) == ("succeeded", False, None)
    assert _stored(db_url) == len(sent) and simulator.queued(ACCOUNT) == []


def test_a_budget_that_cuts_an_exchange_after_progress_still_fails_the_run(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """Progress does not soften a cut: with block 1 stored, a budget (2 s) that ends while block 2's
    answer trickles in cuts that exchange, and the run is failed (not more_waiting) with the budget
    named, the pass exiting 1; the next pass stores every message."""
    sent = backlog(simulator, ACCOUNT, 250)
    simulator.faults.script("history", [200, TRICKLE])
    settings = make_settings(simulator, db_url, [ACCOUNT], SYNC_RUN_BUDGET_SECONDS="2")
    result, _ = timed(lambda: app.sync_once(settings))
    assert not isinstance(result, BaseException)
    (run,) = result.accounts
    assert (run.outcome, run.more_waiting, run.blocks) == ("failed", False, 1)
    assert run.error is not None and "run budget" in run.error
    assert run.duration_seconds <= 2.0 + SLACK
    assert result.exit_code == exitcodes.FAILED
    assert app.sync_once(settings).exit_code == exitcodes.OK
    assert _stored(db_url) == len(sent)
