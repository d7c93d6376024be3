"""Property tests: parsing a history response never fails except in the documented way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import errors, models

# Any JSON value the API could send, including lone surrogates and NULs in strings
# (json.loads accepts "\ud800" escapes, so these reach the parser in production).
_text = st.text(alphabet=st.characters(codec=None), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=25,
)

device = st.fixed_dictionaries(
    {"id": st.text(max_size=12), "kind": st.sampled_from(["imei", "MDN", "iccid", "x-unknown", ""])}
)
# Near-valid messages: the documented keys with values that are usually but not always right.
message_like = st.fixed_dictionaries(
    {},
    optional={
        "deviceIds": st.lists(device | json_values, max_size=3) | json_values,
        "message": _text | json_values,
        "timestamp": st.sampled_from(
            ["2016-01-01T12:29:49-08:00", "2024-05-01T10:00:00.123Z", "2024-05-01T10:00:00", "garbage"]
        )
        | json_values,
    },
)
body_like = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(message_like | json_values, max_size=6) | json_values,
        "hasMoreData": st.booleans() | json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | message_like)
def test_message_from_wire_never_raises(obj: Any) -> None:
    """SMSMessage.from_wire accepts any JSON value, keeps it as raw, reports problems, never raises."""
    msg = models.SMSMessage.from_wire(obj)
    assert msg.raw is obj
    assert all(isinstance(p, str) and p for p in msg.problems)
    assert msg.message is None or isinstance(msg.message, str)
    assert msg.timestamp is None or isinstance(msg.timestamp, str)
    for d in msg.device_ids:
        assert isinstance(d.id, str)
        assert d.kind == d.kind.lower()
    if not isinstance(obj, dict):
        assert msg.problems, "a non-object message must be flagged"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | body_like)
def test_query_result_from_wire_raises_only_response_format_error(obj: Any) -> None:
    """SMSMessagesQueryResult.from_wire either parses every message or raises ResponseFormatError."""
    try:
        result = models.SMSMessagesQueryResult.from_wire(obj)
    except errors.ResponseFormatError as exc:
        assert str(exc)
        return
    assert isinstance(obj, dict)
    raw = obj.get("messages", [])
    assert len(result.messages) == len(raw), "no message may be silently dropped"
    assert [m.raw for m in result.messages] == raw
    assert isinstance(result.has_more_data, bool)


@settings(max_examples=150)
@given(body_like)
def test_query_result_survives_json_round_trip(obj: dict[str, Any]) -> None:
    """A body decoded from JSON text parses the same as the original object (no hidden state)."""
    decoded = json.loads(json.dumps(obj))
    try:
        a = models.SMSMessagesQueryResult.from_wire(obj)
    except errors.ResponseFormatError:
        with pytest.raises(errors.ResponseFormatError):
            models.SMSMessagesQueryResult.from_wire(decoded)
        return
    b = models.SMSMessagesQueryResult.from_wire(decoded)
    assert [m.problems for m in a.messages] == [m.problems for m in b.messages]
    assert a.has_more_data == b.has_more_data


def test_well_formed_message_has_no_problems() -> None:
    """A documented, complete message parses without problems and keeps leading zeros and case-folds kind."""
    msg = models.SMSMessage.from_wire(
        {
            "deviceIds": [{"id": "00012345", "kind": "IMEI"}],
            "message": "hi",
            "timestamp": "2016-01-01T12:29:49-08:00",
        }
    )
    assert msg.problems == ()
    assert msg.device_ids == (models.DeviceId(id="00012345", kind="imei"),)
