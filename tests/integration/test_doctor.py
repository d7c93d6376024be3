"""`sync-worker doctor` (issue 26) through the CLI: a subprocess against the simulator over HTTP and a real
Postgres. It acknowledges nothing, sends no SMS, changes no table but the login guard's (or stores a final
block it was handed), logs in only through the guard, and reports what the head block holds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import urllib.parse
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sync_worker import simulator as sim_mod
from sync_worker import store
from tests.integration.test_cli_e2e import cli

A, B = "0252012345-00001", "0252012345-00002"
WRONG_PASSWORD = "wrong-doctor-password"


def _env(sim: sim_mod.Simulator, db_url: str, *accounts: str, **extra: str) -> dict[str, str]:
    for account in accounts:
        if account not in sim.accounts():
            sim.add_account(account)
    env = sim.worker_env(
        accounts=accounts,
        database_url=db_url,
        inherit=True,
        SYNC_LOG_FORMAT="json",
        THINGSPACE_RETRY_MAX_WAIT="0.2",
    )
    env.update(extra)
    return env


def _doctor(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = cli(env, "doctor", "--json", *args, timeout=120)
    assert WRONG_PASSWORD not in proc.stdout + proc.stderr
    return proc, json.loads(proc.stdout)


def _check(report: dict[str, Any], name: str, account: str | None = None) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name and c.get("account") == account]
    return dict(found)


def _tables(db_url: str) -> dict[str, tuple[int, str]]:
    """Row count and an md5 of the sorted rows of every table, and every sequence's last value."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in names:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.Identifier(schema, table))
            row = conn.execute(query).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
        for schema, name, value in conn.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
        ):
            out[f"sequence {schema}.{name}"] = (0 if value is None else int(value), "")
    return out


def _guard_row(db_url: str) -> tuple[int, str | None] | None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT consecutive_failures, last_outcome FROM login_guard").fetchone()
    return None if row is None else (int(row[0]), row[1])


def _history_rows(db_url: str, account: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sms_history WHERE account_name = %s", (account,)).fetchone()
    assert row is not None
    return int(row[0])


def _no_next_and_no_send(sim: sim_mod.Simulator) -> list[Any]:
    """The simulator saw no request carrying `next` and no `POST /sms`; returns its request log."""
    log = list(sim.stats.requests)
    assert log, "doctor sent nothing"
    assert [r for r in log if "next" in urllib.parse.parse_qs(r.query, keep_blank_values=True)] == []
    assert [r for r in log if r.kind == "send" or (r.method == "POST" and r.path.endswith("/sms"))] == []
    stats = sim.stats.as_dict()
    assert (stats["acks"], stats["sends"], stats["start_callbacks"]) == (0, 0, 0)
    return log


def test_doctor_acknowledges_nothing_sends_nothing_and_changes_no_table_but_the_guard(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """Two 202 heads: all checks ok, no `next` and no POST /sms reach the API, every queue stays whole, and
    every table (and sequence) is byte-identical apart from the login guard's row, which counts the login."""
    simulator.seed(A, 250, seed=1)
    simulator.seed(B, 150, seed=2)
    env = _env(simulator, db_url, A, B)
    before, queued = _tables(db_url), {a: simulator.queued(a) for a in (A, B)}

    proc, report = _doctor(env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["ok"] is True and report["exit_code"] == 0
    assert [(c["name"], c.get("account")) for c in report["checks"]] == [
        ("configuration", None), ("database", None), ("schema", None), ("oauth", None), ("login", None),
        ("clock", None), ("head_block", A), ("head_block", B), ("callbacks", A), ("callbacks", B),
        ("callback_url", None),
    ]  # fmt: skip
    assert {c["name"]: c["verdict"] for c in report["checks"]} == {
        "configuration": "ok", "database": "ok", "schema": "ok", "oauth": "ok", "login": "ok",
        "clock": "ok", "head_block": "ok", "callbacks": "ok", "callback_url": "skipped",
    }  # fmt: skip
    assert report["verdicts"] == {"ok": 10, "warn": 0, "fail": 0, "skipped": 1}
    for check in report["checks"]:
        assert set(check) - {"account"} == {"name", "verdict", "summary", "detail"}
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    assert _check(report, "database")["detail"]["dbname"] == dbname
    assert "password" not in json.dumps(_check(report, "database"))
    assert _check(report, "schema")["detail"]["state"] == "current"
    head = _check(report, "head_block", A)["detail"]["block"]
    assert (head["status"], head["messages"], head["readable"]) == (202, 100, True)
    assert head["unknown_members"] == []
    assert head["members"] == ["hasMoreData", "messages"]
    assert sum(head["timestamp_forms"].values()) == 100 and sum(head["device_kinds"].values()) >= 100

    log = _no_next_and_no_send(simulator)
    assert sorted(r.path for r in log if r.kind == "history") == sorted(
        f"/api/m2m/v1/sms/{a}/history" for a in (A, B)
    )
    assert {a: simulator.queued(a) for a in (A, B)} == queued
    after = _tables(db_url)
    changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
    assert changed == ["public.login_guard"]
    assert _guard_row(db_url) == (0, "succeeded")

    # The queues are whole: a pass stores every message once.
    once = cli(env, "once")
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout.strip().splitlines()[-1])["inserted"] == 400


@pytest.mark.parametrize("final_ack", ["on_delivery", "on_next_get"])
def test_a_final_head_block_handed_over_is_stored_so_nothing_is_lost(
    simulator: sim_mod.Simulator, db_url: str, final_ack: sim_mod.FinalAck
) -> None:
    """A queue of 40 (one final 200 block): doctor stores the 40 it was handed, whichever way the platform
    dequeues a final block, and the pass after it finds nothing more: 40 rows, none lost or doubled."""
    simulator.config.final_ack = final_ack
    simulator.seed(A, 40, seed=4)
    env = _env(simulator, db_url, A)

    proc, report = _doctor(env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = _check(report, "head_block", A)
    assert head["verdict"] == "ok"
    assert head["detail"]["stored"]["inserted"] == 40 and "stored now" in head["summary"]
    assert _history_rows(db_url, A) == 40
    _no_next_and_no_send(simulator)

    once = cli(env, "once")
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout.strip().splitlines()[-1])["inserted"] == 0
    assert _history_rows(db_url, A) == 40
    assert simulator.queued(A) == [] and len(simulator.acknowledged(A)) == 40


def test_a_refused_login_fails_is_counted_and_a_tripped_guard_stops_the_next(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """Wrong password (guard threshold 1): exit 4, login fail naming the refusal, the guard counts 1 as the
    vendor does; run again, the guard refuses: exit 4 saying why, and no login reaches the API."""
    env = _env(simulator, db_url, A, THINGSPACE_PASSWORD=WRONG_PASSWORD, SYNC_LOGIN_GUARD_THRESHOLD="1")

    proc, report = _doctor(env)

    assert proc.returncode == 4, proc.stdout + proc.stderr
    login = _check(report, "login")
    assert login["verdict"] == "fail" and "refused by ThingSpace" in login["summary"]
    assert "1 failed in a row now" in login["summary"]
    assert _guard_row(db_url) == (1, "refused")
    assert simulator.failed_login_streak() == 1
    assert _check(report, "head_block", A)["verdict"] == "skipped"
    assert simulator.stats.history_requests == 0

    proc, report = _doctor(env)

    assert proc.returncode == 4
    login = _check(report, "login")
    assert login["verdict"] == "fail"
    assert login["summary"].startswith("not logging in: login guard tripped")
    assert login["detail"]["guard"]["failures"] == 1
    assert simulator.stats.login_attempts == 1  # the second run never tried
    assert _guard_row(db_url) == (1, "refused")
    table = cli(env, "doctor")
    assert table.returncode == 4 and "FAIL" in table.stdout and "login guard tripped" in table.stdout
    assert simulator.stats.login_attempts == 1


def test_unknown_members_timestamp_forms_and_device_kinds_are_listed(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """A head block with an extra top-level member, a message with an unknown member, kind and a timestamp
    without offset: warn (exit 0), each named in --json and in the table; nothing acknowledged."""
    odd = {
        "deviceIds": [{"id": "0042", "kind": "imsi"}],
        "message": "x",
        "timestamp": "2024-05-01T10:00:00",
        "encoding": "7-bit",
    }
    simulator.inject(A, [odd])
    simulator.seed(A, 150, seed=5)

    def add_member(request: sim_mod.Request, answer: sim_mod.Answer) -> sim_mod.Answer | None:
        if request.kind != "history" or answer.status != 202:
            return None
        return dataclasses.replace(answer, body=b'{"pageInfo":{"page":1},' + answer.body[1:])

    simulator.hooks.rewrite = add_member
    env = _env(simulator, db_url, A)

    proc, report = _doctor(env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = _check(report, "head_block", A)
    assert head["verdict"] == "warn"
    block = head["detail"]["block"]
    assert block["readable"] is True
    assert block["members"] == ["pageInfo", "hasMoreData", "messages"]
    assert block["unknown_members"] == ["pageInfo"]
    assert block["unknown_message_members"] == ["encoding"]
    assert block["unknown_device_kinds"] == ["imsi"]
    assert block["timestamp_forms"]["no zone"] == 1
    assert "'pageInfo'" in head["summary"] and "'encoding'" in head["summary"]

    table = cli(env, "doctor")
    assert table.returncode == 0
    assert "top-level members: pageInfo, hasMoreData, messages (unknown: pageInfo)" in table.stdout
    assert "unknown message members: encoding" in table.stdout
    _no_next_and_no_send(simulator)
    assert len(simulator.queued(A)) == 151


def _closed_port_url(db_url: str) -> str:
    return psycopg.conninfo.make_conninfo(db_url, host="127.0.0.1", port="1")


# case -> (exit code, the first failing check)
_FAILURES = {
    "database_unreachable": (3, "database"),
    "schema_missing": (3, "schema"),
    "invalid_setting": (2, "configuration"),
    "password_missing": (2, "configuration"),
    "head_unreadable": (1, "head_block"),
    "account_unknown_to_the_api": (1, "head_block"),
}


def _failing_env(
    case: str, simulator: sim_mod.Simulator, db_url: str, make_database: Callable[..., str]
) -> dict[str, str]:
    """The environment (and simulator hooks) of one failure case of ``_FAILURES``."""
    env = _env(simulator, db_url, A)
    if case == "database_unreachable":
        env["SYNC_DATABASE_URL"] = _closed_port_url(db_url)
    elif case == "schema_missing":
        env["SYNC_DATABASE_URL"] = make_database(migrated=False)
    elif case == "invalid_setting":
        env["SYNC_CONCURRENCY"] = "0"
    elif case == "password_missing":
        env["THINGSPACE_PASSWORD"] = ""
    elif case == "head_unreadable":
        env["THINGSPACE_RETRY_MAX_ATTEMPTS"] = "1"
        simulator.hooks.rewrite = lambda r, a: (
            dataclasses.replace(a, body=b"<html>busy</html>") if r.kind == "history" else None
        )
    elif case == "account_unknown_to_the_api":
        env["SYNC_ACCOUNTS"] = f"{A},0999999999-00009"  # configured here, unknown at the platform
    return env


@pytest.mark.parametrize("case", sorted(_FAILURES))
def test_exit_codes_name_the_most_basic_failing_check(
    simulator: sim_mod.Simulator, db_url: str, make_database: Callable[..., str], case: str
) -> None:
    """Each failure exits with its documented code, the failing check says fail, and no login is made
    without a usable login guard (no database, no schema): the API sees no login attempt then."""
    simulator.seed(A, 150, seed=6)
    env = _failing_env(case, simulator, db_url, make_database)
    code, failing = _FAILURES[case]
    before = _tables(db_url)

    proc, report = _doctor(env)

    assert proc.returncode == code, proc.stdout + proc.stderr
    assert report["exit_code"] == code
    assert next(c["name"] for c in report["checks"] if c["verdict"] == "fail") == failing
    if case in ("database_unreachable", "schema_missing"):
        assert _check(report, "login")["verdict"] == "skipped"
        assert simulator.stats.login_attempts == 0
    if case == "invalid_setting":
        assert [c["name"] for c in report["checks"]] == ["configuration"]
        assert "SYNC_CONCURRENCY" in report["checks"][0]["summary"]
    if case == "password_missing":
        assert "THINGSPACE_PASSWORD" in _check(report, "configuration")["summary"]
        assert _check(report, "database")["verdict"] == "ok"
        assert simulator.stats.token_requests == simulator.stats.login_attempts == 0
    if case == "head_unreadable":
        head = _check(report, "head_block", A)
        assert "not readable as a block" in head["summary"]
        assert head["detail"]["block"]["members"] is None
        assert "quarantine_id" not in head["detail"]  # a 202 stays queued: nothing to keep
        assert len(simulator.queued(A)) == 150
    if case == "account_unknown_to_the_api":
        unknown = _check(report, "head_block", "0999999999-00009")
        assert "AccountNotFound" in unknown["summary"]
        assert _check(report, "head_block", A)["verdict"] == "ok"
    if case not in {"database_unreachable", "schema_missing"}:
        after = _tables(db_url)
        assert sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n)) in (
            [],
            ["public.login_guard"],
        )
    if case not in {"invalid_setting", "password_missing"}:
        _no_next_and_no_send(simulator)


def test_callback_listeners_are_listed_without_their_password(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """Another integration's SMS listener: warn naming its URL, the password shown only as (set); our own
    listener (SYNC_CALLBACK_URL/callbacks/A, resolving) is ok."""
    listener = {
        "name": "EnhancedConnectivityService",
        "url": "https://other.example.com/cb",
        "username": "them",
        "password": "foreign-listener-pass",
    }
    simulator.add_account(A)
    simulator.push.register(A, json.dumps(listener).encode())
    env = _env(simulator, db_url, A, SYNC_CALLBACK_URL="https://localhost:9443")

    proc, report = _doctor(env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "foreign-listener-pass" not in proc.stdout + proc.stderr
    check = _check(report, "callbacks", A)
    assert check["verdict"] == "warn" and "https://other.example.com/cb" in check["summary"]
    assert check["detail"]["listeners"] == [
        {
            "service": "EnhancedConnectivityService",
            "url": "https://other.example.com/cb",
            "username": "them",
            "password": "(set)",
            "this_receiver": False,
        }
    ]
    assert _check(report, "callback_url")["verdict"] == "ok"

    listener["url"] = f"https://localhost:9443/callbacks/{A}"
    simulator.push.register(A, json.dumps(listener).encode())
    proc, report = _doctor(env)
    assert proc.returncode == 0
    assert _check(report, "callbacks", A)["verdict"] == "ok"
    assert _check(report, "callbacks", A)["detail"]["listeners"][0]["this_receiver"] is True


def test_an_account_whose_run_lock_is_held_is_not_read(simulator: sim_mod.Simulator, db_url: str) -> None:
    """While a sync holds an account's lock, doctor skips its head (it could race the drain) and reads the
    other account's; the busy one gets no history request."""
    simulator.seed(A, 150, seed=7)
    simulator.seed(B, 150, seed=8)
    with psycopg.connect(db_url, autocommit=True) as holder:
        assert store.try_account_lock(holder, A)
        proc, report = _doctor(_env(simulator, db_url, A, B))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = _check(report, "head_block", A)
    assert skipped["verdict"] == "skipped" and "holds its lock" in skipped["summary"]
    assert _check(report, "head_block", B)["verdict"] == "ok"
    assert [r.path for r in simulator.stats.requests if r.kind == "history"] == [
        f"/api/m2m/v1/sms/{B}/history"
    ]


def test_no_history_reads_no_head_block_and_writes_only_the_guard(
    simulator: sim_mod.Simulator, db_url: str
) -> None:
    """`--no-history` on a queue whose head is a final block: no history request, the block stays queued,
    and the login guard's row is the only table that changes."""
    simulator.seed(A, 40, seed=9)
    before = _tables(db_url)

    proc, report = _doctor(_env(simulator, db_url, A), "--no-history")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _check(report, "head_block", A)["verdict"] == "skipped"
    assert simulator.stats.history_requests == 0 and len(simulator.queued(A)) == 40
    after = _tables(db_url)
    assert sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n)) == [
        "public.login_guard"
    ]
