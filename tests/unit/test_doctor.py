"""`sync-worker doctor`'s pure parts (no database, no API): what it may call, timestamp forms, the clock
estimate, the exit code, the head-block summary and the callback URL check."""

from __future__ import annotations

import ast
import calendar
import datetime
import json
from pathlib import Path

import pytest
import requests

from sync_worker import clock_skew, config, doctor, doctor_report, exitcodes, head_summary

ROOT = Path(__file__).resolve().parents[2]

# doctor and the modules that are its alone: none of them may name a forbidden call.
SOURCES = [Path(str(m.__file__)) for m in (doctor, doctor_report, head_summary, clock_skew)]
# Every call that could acknowledge a block, text a device, divert the queue, or change the schema.
FORBIDDEN = {
    "release",
    "iter_history_blocks",
    "acknowledge_unstored",
    "send_sms_to_device",
    "start_queued_sms_delivery",
    "register_callback",
    "deregister_callback",
    "migrate",
    "create_database",
}


def _trees() -> list[ast.Module]:
    return [ast.parse(source.read_text(encoding="utf-8")) for source in SOURCES]


def _calls(name: str) -> list[ast.Call]:
    return [
        node
        for tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
    ]


def test_doctor_never_calls_what_acknowledges_sends_or_migrates() -> None:
    """doctor's modules name none of the calls that acknowledge, send, divert or migrate, and read
    history only through list_devices_sms_messages(account) with no `next` (only the keyword `deadline`)."""
    named = {node.attr for tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    named |= {node.id for tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert named & FORBIDDEN == set()
    reads = _calls("list_devices_sms_messages")
    assert len(reads) == 1
    (read,) = reads
    assert len(read.args) == 1
    assert [k.arg for k in read.keywords] == ["deadline"]


@pytest.mark.parametrize(
    ("value", "form"),
    [
        ("2016-01-01T12:29:49-08:00", "±hh:mm offset"),
        ("2024-05-01T10:00:00.123Z", "Z, 3 fractional digits"),
        ("2024-05-01T10:00:00Z", "Z"),
        ("2024-05-01T10:00:00", "no zone"),
        ("2024-05-01T10:00:00.123456+0200", "±hhmm offset, 6 fractional digits"),
        ("2024-05-01T10:00+02", "±hh offset, no seconds"),
        ("01/05/2024 10:00", "not ISO-8601"),
        (1714557600, "not a string"),
        (None, "not a string"),
    ],
)
def test_timestamp_forms_name_zone_seconds_and_fraction(value: object, form: str) -> None:
    """Each way of writing a timestamp gets its own label (zone kind, seconds, fractional digits)."""
    assert head_summary.timestamp_form(value) == form


def test_skew_is_the_date_header_against_the_middle_of_the_exchange() -> None:
    """Date 10 s past the receipt: +10.5 s (the header truncates) + half the elapsed time; no Date: None."""
    received = float(calendar.timegm((2001, 1, 1, 0, 0, 0)))
    assert clock_skew.skew_seconds("Mon, 01 Jan 2001 00:00:10 GMT", received, 0.2) == pytest.approx(10.6)
    assert clock_skew.skew_seconds(None, received, 0.2) is None
    assert clock_skew.skew_seconds("not a date", received, 0.2) is None


def _response(date: str | None) -> requests.Response:
    response = requests.Response()
    if date is not None:
        response.headers["Date"] = date
    response.elapsed = datetime.timedelta(0)
    return response


@pytest.mark.parametrize(("offset", "verdict"), [(0, "ok"), (4, "ok"), (-30, "warn"), (90, "warn")])
def test_clock_check_warns_beyond_five_seconds(offset: int, verdict: str) -> None:
    """Answers whose Date is `offset` s from this host's clock: ok within 5 s, warn beyond it."""
    received = float(calendar.timegm((2030, 6, 1, 12, 0, 0)))
    samples = clock_skew.DateSamples(now=lambda: received)
    date = datetime.datetime.fromtimestamp(received + offset, datetime.UTC)
    for _ in range(3):
        samples.note(_response(date.strftime("%a, %d %b %Y %H:%M:%S GMT")))
    check = samples.check()
    assert check.verdict == verdict
    assert check.detail["skew_seconds"] == pytest.approx(offset + 0.5)


def test_clock_check_is_skipped_without_a_date_header() -> None:
    """No answer carried Date: the clock check is skipped, saying so."""
    samples = clock_skew.DateSamples()
    samples.note(_response(None))
    check = samples.check()
    assert (check.verdict, check.summary) == ("skipped", "no API answer carried a Date header")


def test_exit_code_is_the_most_basic_failing_check() -> None:
    """Config before database before auth before the rest; warnings and skips alone exit 0."""
    found = doctor_report.Report()
    found.add(doctor_report.Check("clock", "warn", "w"))
    found.add(doctor_report.Check("callbacks", "skipped", "s"))
    assert found.exit_code == exitcodes.OK
    found.add(doctor_report.Check("head_block", "fail", "f", code=exitcodes.FAILED))
    assert found.exit_code == exitcodes.FAILED
    found.add(doctor_report.Check("login", "fail", "f", code=exitcodes.AUTH))
    assert found.exit_code == exitcodes.AUTH
    found.add(doctor_report.Check("schema", "fail", "f", code=exitcodes.DATABASE))
    assert found.exit_code == exitcodes.DATABASE
    found.add(doctor_report.Check("configuration", "fail", "f", code=exitcodes.CONFIG))
    assert found.exit_code == exitcodes.CONFIG
    shown = found.as_dict()
    assert shown["verdicts"] == {"ok": 0, "warn": 1, "fail": 4, "skipped": 1}
    assert shown["ok"] is False and shown["exit_code"] == exitcodes.CONFIG
    assert found.table().splitlines()[-1] == "0 ok, 1 warn, 4 failed, 1 skipped; exit 2"


def test_the_json_report_has_the_members_docs_operations_names() -> None:
    """`doctor --json` is one object of `ok`, `exit_code`, `verdicts` and `checks`; a check has `name`,
    `verdict`, `summary`, `detail`, and `account` only when it is about one account, as
    docs/operations.md "First contact" says."""
    found = doctor_report.Report()
    found.add(doctor_report.Check("clock", "ok", "c"))
    found.add(doctor_report.Check("head_block", "ok", "h", account="0252012345-00001"))
    shown = json.loads(found.to_json())
    assert sorted(shown) == ["checks", "exit_code", "ok", "verdicts"]
    assert [sorted(c) for c in shown["checks"]] == [
        ["detail", "name", "summary", "verdict"],
        ["account", "detail", "name", "summary", "verdict"],
    ]
    doc = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert (
        "`--json`: `ok`, `exit_code`, `verdicts`, and a `checks` list of `name`, `verdict`, `summary`, "
        "`detail`, plus `account` for the per-account checks" in doc
    )


def test_summary_of_an_unreadable_head_names_why_and_what_it_holds() -> None:
    """A member given twice: not readable as a block (the gate's reason), members listed as sent;
    not JSON: no members at all; neither shows a message text or device id."""
    twice = (
        b'{"hasMoreData":true,"messages":[{"message":"PIN 4711","deviceIds":[{"id":"00991","kind":"imei"}]}],'
    )
    twice += b'"messages":[]}'
    summary = head_summary.summarise(202, twice, has_token=True)
    assert summary["readable"] is False and "more than once" in summary["problem"]
    assert summary["members"] == ["hasMoreData", "messages", "messages"]
    assert "4711" not in str(summary) and "00991" not in str(summary)
    garbage = head_summary.summarise(200, b"<html>busy</html>", has_token=False)
    assert (garbage["readable"], garbage["members"]) == (False, None)


def test_summary_counts_members_forms_kinds_and_malformed_messages() -> None:
    """A readable final block of two messages: message members, forms, kinds (case as sent, unknown
    ones named) and the malformed count come from the body."""
    body = (
        b'{"messages":[{"deviceIds":[{"id":"1","kind":"IMEI"}],"message":"a","timestamp":"2024-05-01T10:00:00Z"},'
        b'{"deviceIds":[{"id":"2","kind":"imsi"}],"message":"b","timestamp":"yesterday","x":1}],'
        b'"hasMoreData":false}'
    )
    summary = head_summary.summarise(200, body, has_token=False)
    assert summary["readable"] is True and summary["messages"] == 2
    assert summary["message_members"] == {"deviceIds": 2, "message": 2, "timestamp": 2, "x": 1}
    assert summary["unknown_message_members"] == ["x"]
    assert summary["timestamp_forms"] == {"Z": 1, "not ISO-8601": 1}
    assert summary["device_kinds"] == {"IMEI": 1, "imsi": 1}
    assert summary["unknown_device_kinds"] == ["imsi"]
    assert summary["malformed"] == 1
    lines = head_summary.describe_block(summary)
    assert lines[1] == "top-level members: messages, hasMoreData (all known)"


def test_callback_url_check_resolves_or_fails() -> None:
    """SYNC_CALLBACK_URL on a host that cannot resolve (.invalid, RFC 6761) fails; localhost is ok; unset
    is skipped."""

    def settings(url: str) -> config.Settings:
        env = {"SYNC_CALLBACK_URL": url} if url else {}
        return config.load(env, require_credentials=False, require_accounts=False)

    failed = doctor.callback_url_check(settings("https://doctor-check.invalid"))
    assert failed.verdict == "fail" and "does not resolve" in failed.summary
    resolved = doctor.callback_url_check(settings("https://localhost:9443"))
    assert resolved.verdict == "ok" and resolved.detail["port"] == 9443
    assert doctor.callback_url_check(settings("")).verdict == "skipped"
