"""Hostile and malformed API input, end to end (simulator over HTTP -> client -> sync -> Postgres).

Every case must end in a clear error (a handled, failed account run naming the problem, with the
cursor at the last committed block), in stored rows, or, for a block whose *body* cannot be read
although its paging is valid, in a quarantined block (its exact bytes in ``sms_quarantine``, the
cursor past it, the run succeeding with ``quarantined`` counted). Never a crash, a silent drop or a
stuck queue: bad bodies are also served *persistently* (every time their block is served).
"""

from __future__ import annotations

import collections
import hashlib
import json
import socket
import threading
from typing import Any

import psycopg
import pytest
import structlog

from sync_worker import exitcodes, report, simulator
from sync_worker import status as status_tables
from tests.reliability import crash, inproc

ACCOUNT = "0252012345-00031"
ACCOUNTS = (ACCOUNT,)
CLEAR_ERRORS = ("ResponseFormatError", "UnsafeLocationError")


def _sim() -> crash.HookedSimulator:
    return crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode="reusable")
    )


def _drains_exactly_afterwards(sim: simulator.Simulator, db_url: str) -> None:
    """The follow-up pass succeeds and the table equals the delivered set."""
    sim.faults.clear()
    again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    assert again.exit_code == 0, again.summary()
    cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.exact, cmp


def _ended_with_clear_error(result: Any) -> None:
    (account,) = result.accounts
    assert account.outcome == "failed", account
    assert account.error_kind in CLEAR_ERRORS, account
    assert account.error and "operation=list_devices_sms_messages" in account.error


def _history_body(messages: Any, has_more: Any = False) -> bytes:
    return json.dumps({"hasMoreData": has_more, "messages": messages}).encode()


_DEEP = 100_000
BODY_CASES: dict[str, bytes] = {
    "not_json": b"<html><body>Service Unavailable</body></html>",
    "empty_body": b"",
    "truncated_json": b'{"hasMoreData": false, "messages": [{"message": "hi"',
    "json_array": b"[]",
    "json_string": b'"messages"',
    "json_null": b"null",
    "messages_not_a_list": b'{"hasMoreData": false, "messages": {"0": {"message": "x"}}}',
    "messages_null": b'{"hasMoreData": false, "messages": null}',
    "has_more_not_bool": b'{"hasMoreData": "false", "messages": []}',
    "deep_nesting_in_message": b'{"hasMoreData":false,"messages":[' + b"[" * _DEEP + b"]" * _DEEP + b"]}",
    "deep_nesting_envelope": b"[" * _DEEP + b"]" * _DEEP,
}


def _quarantined(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT account_name, http_status, request_token, next_token, body, body_size, body_sha256,"
            " problem FROM sms_quarantine ORDER BY id"
        ).fetchall()


def _succeeded_with_quarantine(result: Any, quarantined: int = 1) -> Any:
    (account,) = result.accounts
    assert result.exit_code == exitcodes.QUARANTINED == 5, result.summary()
    assert account.outcome == "quarantined", account
    assert account.quarantined == quarantined, account
    assert account.error and "quarantined" in account.error, account
    return account


@pytest.mark.parametrize("case", list(BODY_CASES))
def test_one_shot_unreadable_final_body_is_retried_and_nothing_is_quarantined(db_url: str, case: str) -> None:
    """A bad final-200 body served once is a transient fault: the same request again stores everything."""
    sim = _sim()
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=1))
        sim.faults.next_history_raw(BODY_CASES[case], 200, [("Content-Type", "application/json")])
        result, observer, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert result.exit_code == 0, result.summary()
        (account,) = result.accounts
        assert (account.outcome, account.quarantined, account.inserted) == ("succeeded", 0, 250), account
        assert _quarantined(db_url) == []
        assert [r[1] for r in observer.retries] == ["unreadable_body"]
        cmp = crash.compare(sim, db_url, ACCOUNTS)
        assert cmp.exact, cmp


def test_unreadable_body_mid_paging_is_retried_with_the_same_token(db_url: str) -> None:
    """A bad body on the third request is retried with the second block's token; the pass stores all 450."""
    sim = _sim()
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 450, seed=2))
        sim.faults.script("history", [200, 200, simulator.Raw(status=200, body=b"not json")])
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert result.exit_code == 0, result.summary()
        (account,) = result.accounts
        assert (account.blocks, account.inserted, account.quarantined) == (5, 450, 0), account
        assert _quarantined(db_url) == []
        log = [r for r in sim.stats.requests if r.kind == "history"]
        assert log[2].query == log[3].query and log[3].query.startswith("next=")
        cmp = crash.compare(sim, db_url, ACCOUNTS)
        assert cmp.exact, cmp


class _PoisonSimulator(crash.HookedSimulator):
    """Serves ``poison`` instead of the body of whichever block holds ``marker``, every time that
    block is served (a reusable token's replay, a GET at the head): a persistently bad block. The
    request is still processed, so status, Location and acknowledgements are the real ones; a final
    block served unreadable is not dequeued (like any reply the simulator could not deliver). Setting
    ``fixed`` stops the poisoning."""

    def __init__(self, config: simulator.SimConfig, marker: bytes, poison: bytes) -> None:
        super().__init__(config)
        self.marker = marker
        self.poison = poison
        self.poisoned: list[Any] = []
        self.poison_served = 0
        self.fixed = False
        self.hooks.rewrite = self._poison

    def _poison(self, request: simulator.Request, answer: simulator.Answer) -> simulator.Answer | None:
        if request.kind != "history" or answer.status not in (200, 202) or self.fixed:
            return None
        if self.marker not in answer.body:
            return None
        self.poison_served += 1
        self.poisoned = json.loads(answer.body)["messages"]
        return simulator.Answer(answer.status, self.poison, answer.headers)


_TEN_MB_BAD = b'{"hasMoreData": true, "messages": "' + b"x" * (10 * 1024 * 1024) + b'"}'
PERSISTENT_CASES: dict[str, bytes] = {**BODY_CASES, "ten_megabytes_messages_not_a_list": _TEN_MB_BAD}


def _persistent_run(
    db_url: str, *, token_mode: str, final_ack: str, poison: bytes, index: int, total: int = 250
) -> _PoisonSimulator:
    sim = _PoisonSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack=final_ack, token_mode=token_mode),
        marker=f"#{index} temp=".encode(),
        poison=poison,
    )
    sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, total, seed=11))
    return sim


def _check_persistent(sim: _PoisonSimulator, db_url: str, poison: bytes, status: int) -> None:
    [row] = _quarantined(db_url)
    assert row[1] == status
    assert (row[3] is None) == (status == 200)
    assert row[4] == poison and row[5] == len(poison)
    assert row[6] == hashlib.sha256(poison).hexdigest()
    # Quarantined only after every attempt (inproc.run_pass: 8) came back unreadable.
    assert sim.poison_served >= 8
    # Every good message is stored exactly once; the poisoned block's messages exist only in the
    # quarantined body the platform sent instead of them.
    poisoned = collections.Counter(
        (ACCOUNT, json.dumps(m, sort_keys=True, ensure_ascii=True)) for m in sim.poisoned
    )
    assert len(sim.poisoned) == 100
    assert crash.stored(db_url) + poisoned == crash.delivered(sim, ACCOUNTS)
    # Not stuck: a later pass finds nothing new to store or quarantine and succeeds.
    again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    assert again.exit_code == 0, again.summary()
    (account,) = again.accounts
    assert account.outcome == "succeeded" and account.inserted == 0 and account.quarantined == 0, account
    assert len(_quarantined(db_url)) == 1
    assert sim.queued(ACCOUNT) == []


@pytest.mark.parametrize("token_mode", ["reusable", "single_use"])
@pytest.mark.parametrize("case", list(PERSISTENT_CASES))
def test_persistently_malformed_block_is_quarantined_and_the_queue_moves_past_it(
    db_url: str, case: str, token_mode: str
) -> None:
    """A block whose body is always bad is kept exactly, acknowledged, and every other message stored."""
    poison = PERSISTENT_CASES[case]
    sim = _persistent_run(db_url, token_mode=token_mode, final_ack="on_next_get", poison=poison, index=120)
    with sim:
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, read_timeout=30)
        account = _succeeded_with_quarantine(result)
        assert (account.blocks, account.received, account.inserted) == (2, 150, 150), account
        _check_persistent(sim, db_url, poison, 202)


@pytest.mark.parametrize("final_ack", ["on_delivery", "on_next_get"])
@pytest.mark.parametrize("token_mode", ["reusable", "single_use"])
def test_persistently_malformed_final_block_is_quarantined(
    db_url: str, token_mode: str, final_ack: str
) -> None:
    """A final 200 with an always-bad body is kept exactly, the cursor ends at the head, later passes pass."""
    poison = BODY_CASES["messages_not_a_list"]
    sim = _persistent_run(
        db_url, token_mode=token_mode, final_ack=final_ack, poison=poison, index=250, total=300
    )
    with sim:
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        account = _succeeded_with_quarantine(result)
        assert (account.blocks, account.inserted) == (2, 200), account
        assert "whether more messages wait is unknown" in account.error
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT next_token FROM sync_cursor").fetchall() == [(None,)]
        [row] = _quarantined(db_url)
        assert (row[1], row[3], row[4]) == (200, None, poison)
        # The platform still holds the block, so the next pass meets it again (from the head): exit 5 again.
        again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        _succeeded_with_quarantine(again)
        assert {r[6] for r in _quarantined(db_url)} == {hashlib.sha256(poison).hexdigest()}
        # Once the platform serves it readably, its messages are stored.
        sim.fixed = True
        fixed, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert fixed.exit_code == 0, fixed.summary()
        assert fixed.accounts[0].inserted == 100
        cmp = crash.compare(sim, db_url, ACCOUNTS)
        assert cmp.exact, cmp


def test_quarantine_is_logged_counted_and_shown_by_status(db_url: str) -> None:
    """The quarantine logs an error event with size and digest, and status shows the account's count."""
    poison = BODY_CASES["not_json"]
    sim = _persistent_run(db_url, token_mode="reusable", final_ack="on_next_get", poison=poison, index=10)
    with sim, structlog.testing.capture_logs() as events:
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    _succeeded_with_quarantine(result)
    [event] = [e for e in events if e["event"] == "block_quarantined"]
    assert event["log_level"] == "error"
    assert (event["account"], event["status"], event["size"]) == (ACCOUNT, 202, len(poison))
    assert event["sha256"] == hashlib.sha256(poison).hexdigest()
    assert event["problem"] == "response body is not JSON"
    with psycopg.connect(db_url, autocommit=True) as conn:
        [status] = status_tables.account_status(conn)
        run = conn.execute("SELECT outcome, quarantined, error FROM sync_run").fetchone()
        table = report.status_table(report.status_rows(conn))
    assert status.quarantined == 1 and status.last_run_outcome == "quarantined"
    assert "quarantined" in (status.last_error or "")
    assert run is not None and run[:2] == ("quarantined", 1) and "quarantine list" in run[2]
    header, _, line = table.splitlines()
    column = header.index("quarantined")
    assert line[column : column + len("quarantined")].strip() == "1"


def test_duplicate_keys_inside_a_message_take_one_value_and_store_the_message(db_url: str) -> None:
    """Duplicate keys inside a message resolve to the last value (as json does); the message is stored.

    A duplicate *top-level* member makes the whole answer unreadable instead (test_envelope_gate.py).
    """
    sim = _sim()
    with sim:
        body = (
            b'{"hasMoreData": false, "messages": [{"message": "first",'
            b' "message": "second",'
            b' "timestamp": "2024-05-01T10:00:00Z", "deviceIds": [{"id": "1", "kind": "imei"}]}]}'
        )
        sim.faults.next_history_raw(body, 200, [("Content-Type", "application/json")])
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert result.exit_code == 0, result.summary()
        with psycopg.connect(db_url) as conn:
            texts = [r[0] for r in conn.execute("SELECT message FROM sms_history")]
    assert texts == ["second"]


def test_body_that_is_not_utf8_is_quarantined_byte_for_byte(db_url: str) -> None:
    """A body with invalid UTF-8 bytes cannot be decoded: it is quarantined exactly (no lossy repair)."""
    sim = _sim()
    with sim:
        body = b'{"hasMoreData": false, "messages": [{"message": "\xff\xfe"}]}'
        for _ in range(8):  # inproc.run_pass's max_attempts: unreadable through every attempt
            sim.faults.next_history_raw(body, 200, [("Content-Type", "application/json")])
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        account = _succeeded_with_quarantine(result)
        assert account.received == crash.row_count(db_url) == 0
        [row] = _quarantined(db_url)
        assert row[4] == body


@pytest.mark.timeout(120)
def test_ten_megabyte_body_is_stored_or_refused_clearly(db_url: str) -> None:
    """A 10 MB history body becomes a stored row with the text intact or a clear error, never a crash."""
    sim = _sim()
    text = "x" * (10 * 1024 * 1024)
    with sim:
        body = _history_body(
            [
                {
                    "message": text,
                    "timestamp": "2024-05-01T10:00:00Z",
                    "deviceIds": [{"id": "1", "kind": "imei"}],
                }
            ]
        )
        sim.faults.next_history_raw(body, 200, [("Content-Type", "application/json")])
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS, read_timeout=30)
        (account,) = result.accounts
        if account.outcome == "succeeded":
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT length(message) FROM sms_history").fetchone()
            assert row == (len(text),)
        else:
            _ended_with_clear_error(result)


# --- hostile messages: each must become a row that keeps the exact original --------------

_DEV = [{"id": "0012345678", "kind": "imei"}]
_TS = "2024-05-01T10:00:00-07:00"
MESSAGE_CASES: dict[str, Any] = {
    "nul_in_text": {"deviceIds": _DEV, "message": "a\x00b", "timestamp": _TS},
    "lone_surrogate": {"deviceIds": _DEV, "message": "bad \ud800 half", "timestamp": _TS},
    "rtl_and_emoji": {
        "deviceIds": _DEV,
        "message": "\u202e\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \U0001f600\u200d\U0001f525",
        "timestamp": _TS,
    },
    "ten_kb_text": {"deviceIds": _DEV, "message": "\u00e9" * 10_240, "timestamp": _TS},
    "timestamp_without_offset": {"deviceIds": _DEV, "message": "no tz", "timestamp": "2024-05-01T10:00:00"},
    "timestamp_with_millis": {"deviceIds": _DEV, "message": "ms", "timestamp": "2024-05-01T10:00:00.123Z"},
    "garbage_timestamp": {"deviceIds": _DEV, "message": "gt", "timestamp": "yesterday-ish"},
    "timestamp_year_0": {"deviceIds": _DEV, "message": "y0", "timestamp": "0000-01-01T00:00:00Z"},
    "timestamp_out_of_range": {"deviceIds": _DEV, "message": "oor", "timestamp": "9999-12-31T23:59:59-12:00"},
    "unknown_device_kind": {
        "deviceIds": [{"id": "77", "kind": "satellite"}],
        "message": "k",
        "timestamp": _TS,
    },
    "empty_device_list": {"deviceIds": [], "message": "nobody", "timestamp": _TS},
    "device_id_number": {"deviceIds": [{"id": 12345, "kind": "imei"}], "message": "n", "timestamp": _TS},
    "fields_missing": {},
    "fields_wrong_types": {"deviceIds": "imei", "message": 42, "timestamp": 1714560000},
    "message_is_a_string": "just a string",
    "message_is_null": None,
    "nan_in_message": {"deviceIds": _DEV, "message": "nan", "timestamp": _TS, "extra": float("nan")},
    "sql_metacharacters": {
        "deviceIds": [{"id": "1'; DROP TABLE sms_history; --", "kind": "imei"}],
        "message": "Robert'); DROP TABLE sms_history;-- $1 %s %(x)s \\x00 E'\\\\'",
        "timestamp": "2024-05-01T10:00:00Z'; --",
    },
}


def _serve_block(sim: simulator.Simulator, messages: list[Any]) -> None:
    # Served as raw bytes with ASCII escapes: what a JSON API sends for NULs and lone surrogates.
    body = json.dumps({"hasMoreData": False, "messages": messages}, ensure_ascii=True).encode()
    sim.faults.next_history_raw(body, 200, [("Content-Type", "application/json")])


@pytest.mark.parametrize("case", list(MESSAGE_CASES))
def test_hostile_message_becomes_a_row_with_the_exact_original(db_url: str, case: str) -> None:
    """A hostile message is stored as a row whose raw JSON is exactly what arrived; its neighbours too."""
    sim = _sim()
    hostile = MESSAGE_CASES[case]
    block = [
        *crash.make_messages(ACCOUNT, 0, 3, seed=9),
        hostile,
        *crash.make_messages(ACCOUNT, 3, 3, seed=9),
    ]
    with sim:
        _serve_block(sim, block)
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    assert result.exit_code == 0, result.summary()
    (account,) = result.accounts
    assert account.received == account.inserted == 7, account
    found = crash.stored(db_url)
    expected: dict[tuple[str, str], int] = {}
    for msg in block:
        key = (ACCOUNT, json.dumps(msg, sort_keys=True, ensure_ascii=True))
        expected[key] = expected.get(key, 0) + 1
    assert dict(found) == expected
    with psycopg.connect(db_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert {"sms_message", "sync_cursor", "sync_run"} <= tables
    assert "sms_history" in views


def test_simulator_can_queue_a_lone_surrogate() -> None:
    """The simulator queues any JSON-representable message, lone surrogates included, as its docs promise."""
    sim = simulator.Simulator(simulator.SimConfig(accounts=ACCOUNTS))
    sim.inject(ACCOUNT, [MESSAGE_CASES["lone_surrogate"]])
    assert sim.queued(ACCOUNT) == [MESSAGE_CASES["lone_surrogate"]]


def test_malformed_messages_are_counted_with_their_problems(db_url: str) -> None:
    """Malformed messages are stored and reported (sync_run.malformed, problems), not silently normalised."""
    sim = _sim()
    with sim:
        sim.inject(ACCOUNT, [MESSAGE_CASES["fields_missing"], MESSAGE_CASES["garbage_timestamp"]])
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
    (account,) = result.accounts
    assert account.outcome == "succeeded" and account.received == 2 and account.malformed == 2, account
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT problems, received_at, timestamp_raw FROM sms_history").fetchall()
    assert len(rows) == 2 and all(problems for problems, _, _ in rows)
    [garbage] = [r for r in rows if r[2] == MESSAGE_CASES["garbage_timestamp"]["timestamp"]]
    assert garbage[1] is None  # an unparseable timestamp is NULL, never a guess


# --- hostile paging -------------------------------------------------------------------------


class _Listener:
    """A loopback TCP port that counts connections: a foreign Location must never be contacted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


LOCATION_CASES: dict[str, str | None] = {
    "no_location": None,
    "location_without_next": "/sms/{a}/history",
    "location_empty_next": "/sms/{a}/history?next=",
    "location_two_next": "/sms/{a}/history?next=abc&next=def",
    "other_host": "http://evil.example:{p}/api/m2m/v1/sms/{a}/history?next=abc123",
    # Same scheme and port as the simulator, only the host differs: the port check cannot catch these.
    # localhost even reaches the simulator itself, so following it would be a visible extra request.
    "other_host_same_port": "http://evil.example:{s}/api/m2m/v1/sms/{a}/history?next=abc123",
    "other_name_for_loopback_same_port": "http://localhost:{s}/api/m2m/v1/sms/{a}/history?next=abc123",
    "other_port_loopback": "http://127.0.0.1:{p}/api/m2m/v1/sms/{a}/history?next=abc123",
    "other_scheme": "ftp://127.0.0.1/api/m2m/v1/sms/{a}/history?next=abc123",
    "scheme_relative": "//evil.example:{p}/sms/{a}/history?next=abc123",
    "userinfo": "http://user:pw@127.0.0.1:{s}/api/m2m/v1/sms/{a}/history?next=abc123",
    "token_dot_dot": "/sms/{a}/history?next=../../etc/passwd",
    "token_nul": "/sms/{a}/history?next=abc%00def",
    "token_space_encoded": "/sms/{a}/history?next=abc%20def",
    "token_space_raw": "/sms/{a}/history?next=abc def",
    "token_10000_chars": "/sms/{a}/history?next=" + "a" * 10_000,
    "token_crlf": "/sms/{a}/history?next=abc%0d%0aX-Injected:%201",
    "token_unicode": "/sms/{a}/history?next=%C3%A9t%C3%A9",
}


@pytest.mark.parametrize("case", list(LOCATION_CASES))
def test_hostile_location_is_refused_without_contacting_anyone(db_url: str, case: str) -> None:
    """A 202 whose Location is missing, foreign or has a bad token is a clear error; nothing is sent to it."""
    sim = _sim()
    foreign = _Listener()
    try:
        with sim:
            sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=3))
            template = LOCATION_CASES[case]
            headers: tuple[tuple[str, str], ...] = ()
            if template is not None:
                location = template.format(a=ACCOUNT, p=foreign.port, s=sim.port)
                headers = (("Location", location),)
            # The simulator processes the request (the previous block is acknowledged, a real block
            # is served) and only its Location is replaced, so a careless client would follow it.
            sim.faults.script(
                "history", [200, simulator.Raw(body=None, headers=headers, drop_headers=("Location",))]
            )
            before = sim.stats.history_requests
            result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
            _ended_with_clear_error(result)
            assert result.accounts[0].blocks == 1
            # No request after the bad Location: not to the foreign host, not even to the simulator.
            assert sim.stats.history_requests - before == 2
            assert foreign.connections == 0
            _drains_exactly_afterwards(sim, db_url)
    finally:
        foreign.close()


def test_200_with_has_more_data_true_is_asked_again_and_never_stored(db_url: str) -> None:
    """A final 200 that claims hasMoreData is not the block: asked again, the real answer is stored, the
    odd one never is, and nothing is lost."""
    sim = _sim()
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 150, seed=4))
        odd = crash.make_messages("odd", 0, 1, seed=4)
        sim.faults.next_history_raw(
            _history_body(odd, has_more=True), 200, [("Content-Type", "application/json")]
        )
        result, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert result.exit_code == 0, result.summary()
        found = crash.stored(db_url)
        expected = crash.delivered(sim, ACCOUNTS)
    assert found == expected and sum(found.values()) == 150


def test_202_with_an_empty_block_is_asked_again_and_its_token_never_sent(db_url: str) -> None:
    """A 202 with no messages is not a block: the same request again, its token never sent; it drains."""
    sim = _sim()
    with sim:
        sim.inject(ACCOUNT, crash.make_messages(ACCOUNT, 0, 250, seed=5))
        # Served instead of the first block: a token the simulator never issued, so it answers
        # InvalidNextToken when the worker follows it; the worker must recover at the head.
        sim.faults.next_history_raw(
            _history_body([], has_more=True),
            202,
            [
                ("Content-Type", "application/json"),
                ("Location", f"/sms/{ACCOUNT}/history?next=Empty202Token"),
            ],
        )
        first, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        (account,) = first.accounts
        assert account.outcome == "succeeded", account
        assert not [r for r in sim.stats.requests if "Empty202Token" in r.query]
        assert crash.row_count(db_url) == 250
        _drains_exactly_afterwards(sim, db_url)
