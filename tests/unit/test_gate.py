"""The acknowledgement gate (``sync_worker.gate``): its decision on 1,000s of mutated answers against an
independent oracle, its top-level reader against ``json.loads``, tickets, and who may skip storing."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import errors, gate, quarantine
from tests import gate_oracle

PACKAGE = Path(__file__).resolve().parents[2] / "sync_worker"

_MESSAGE = st.fixed_dictionaries(
    {
        "deviceIds": st.just([{"id": "00123", "kind": "imei"}]),
        "message": st.text(max_size=8),
        "timestamp": st.just("2024-05-01T10:00:00Z"),
    }
)


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[int, bytes, str | None]:
    status = draw(st.sampled_from([200, 202]))
    messages = draw(st.lists(_MESSAGE, min_size=0 if status == 200 else 1, max_size=3))
    members = [("hasMoreData", status == 202), ("messages", messages)]
    if draw(st.booleans()):
        members.reverse()
    answer = draw(gate_oracle.answers(status, members))
    # What the client hands the gate: the Location's token, on a 202 only.
    token = "Tok1" if answer.status == 202 and answer.keep_location else None
    return answer.status, answer.body, token


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_gate_recognises_exactly_what_the_documented_rules_accept(
    answer: tuple[int, bytes, str | None],
) -> None:
    """On mutated envelopes, recognise() accepts an answer iff the oracle does, with the messages listed."""
    status, body, token = answer
    expected = gate_oracle.recognised(status, body, token)
    try:
        envelope = gate.recognise(status, body, token)
    except errors.ResponseFormatError as exc:
        assert expected is None, f"refused a block the rules accept: {exc}"
        assert str(exc)
        return
    assert expected is not None, f"accepted what the rules refuse: {body[:200]!r}"
    assert envelope.messages == expected
    assert envelope.has_more_data is (status == 202)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def _texts(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(st.tuples(st.sampled_from(["a", "b", "messages", "\u00e9"]), _JSON), max_size=4))
    body = gate_oracle.envelope_body(members, spaced=draw(st.booleans()))
    kind = draw(st.sampled_from(["object", "cut", "value", "bytes", "bom", "trailing"]))
    if kind == "cut":
        return body[: draw(st.integers(0, len(body)))]
    if kind == "value":
        return json.dumps(draw(_JSON)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=12))
    if kind == "bom":
        return b"\xef\xbb\xbf" + body
    if kind == "trailing":
        return body + draw(st.sampled_from([b"}", b",", b" x", b"{}", b"\n"]))
    return body


@settings(max_examples=1000, deadline=None)
@given(_texts())
def test_top_level_reader_accepts_exactly_what_json_loads_accepts(body: bytes) -> None:
    """top_level_members() decodes what json.loads decodes (top-level pairs in order, duplicates kept) and
    refuses the rest: the gate is as strict and as lenient as the stdlib decoder."""
    pairs: list[list[tuple[str, Any]]] = []

    def hook(found: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs.append(found)
        return dict(found)

    try:
        value = json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            gate.top_level_members(body)
        return
    if not isinstance(value, dict):
        with pytest.raises(gate.NotAnObjectError):
            gate.top_level_members(body)
        return
    assert gate.top_level_members(body) == pairs[-1]


@pytest.mark.parametrize(
    "body",
    [
        b'{"hasMoreData": true, "messages": [1], "messages": []}',
        b'{"messages": [1], "hasMoreData": true, "hasMoreData": true}',
        b'{"messages": [1], "hasMoreData": true, "x": 1, "x": 2}',
        # The same name spelled with an escape is the same member.
        b'{"messages": [1], "hasMoreData": true, "messag\\u0065s": []}',
    ],
)
def test_any_duplicated_top_level_member_is_refused(body: bytes) -> None:
    """A top-level member twice (however spelled) makes the answer unreadable; nested duplicates do not."""
    with pytest.raises(errors.ResponseFormatError, match="more than once"):
        gate.recognise(202, body, "Tok1")
    nested = b'{"messages": [{"message": "a", "message": "b"}], "hasMoreData": true}'
    assert gate.recognise(202, nested, "Tok1").messages == [{"message": "b"}]


def test_unknown_members_are_named_up_to_the_cap_then_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown members are reported by name (first sighting logged once), and past the cap as 'other'."""
    monkeypatch.setattr(gate, "_seen_unknown", set())
    names = [f"extra{i}" for i in range(gate.MAX_NAMED_UNKNOWN + 3)]
    labels = [gate.unknown_member_label(n) for n in names]
    assert labels[: gate.MAX_NAMED_UNKNOWN] == names[: gate.MAX_NAMED_UNKNOWN]
    assert labels[gate.MAX_NAMED_UNKNOWN :] == [gate.OTHER_MEMBER] * 3
    assert gate.unknown_member_label("extra0") == "extra0"
    body = b'{"hasMoreData": false, "messages": [], "requestId": "r", "meta": {}}'
    assert gate.recognise(200, body, None).unknown == ("requestId", "meta")


def test_release_needs_a_settled_ticket() -> None:
    """release() gives the token only for a committed (every listed message) or quarantined block."""
    with pytest.raises(errors.AcknowledgementRefusedError):
        gate.release(None)
    ticket = gate.Ticket("Tok2", 3)
    with pytest.raises(errors.AcknowledgementRefusedError):
        gate.release(ticket)
    with pytest.raises(errors.AcknowledgementRefusedError):
        ticket.committed(2)  # fewer rows than the body listed
    with pytest.raises(errors.AcknowledgementRefusedError):
        gate.release(ticket)
    ticket.committed(3)
    assert gate.release(ticket) == "Tok2"
    unread = gate.Ticket("Tok3", None)
    with pytest.raises(errors.AcknowledgementRefusedError):
        unread.committed(0)  # an unread body is settled only by its quarantine
    unread.quarantined()
    assert gate.release(unread) == "Tok3"
    final = gate.Ticket(None, 1)
    final.committed(1)
    with pytest.raises(errors.AcknowledgementRefusedError):
        gate.release(final)


def test_the_worker_never_skips_storing() -> None:
    """Only tests and benchmarks call Ticket.acknowledge_unstored: no module of the package does."""
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "acknowledge_unstored":
                callers.append(str(path.relative_to(PACKAGE)))
    assert callers == []


@st.composite
def _nested_only(draw: st.DrawFn) -> bytes:
    """A body whose top level has no 'messages' member while some member nests one (or a string holds one)."""
    nested = draw(st.lists(_MESSAGE, min_size=1, max_size=2))
    decoy = draw(
        st.sampled_from(
            [
                {"messages": nested},
                [{"messages": nested}],
                {"a": {"messages": nested}},
                '"messages":[{"m":1}]',
            ]
        )
    )
    members = [(draw(st.sampled_from(["meta", "smsMessages", "data"])), decoy), ("hasMoreData", True)]
    if draw(st.booleans()):
        members.reverse()
    body = gate_oracle.envelope_body(members, spaced=draw(st.booleans()))
    return body[: draw(st.integers(len(body) // 2, len(body)))]


@settings(max_examples=300, deadline=None)
@given(_nested_only())
def test_replay_never_takes_a_nested_messages_list(body: bytes) -> None:
    """quarantine.read_block reads only top-level members: a nested list is never read, never resolved."""
    messages, problem = quarantine.read_block("0252012345-00001", body, len(body))
    assert messages == [] and problem is not None
