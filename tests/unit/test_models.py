"""Wire models: send-request validation and tolerant parsing of history bodies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sync_worker import errors, gsm, models

DEVICE = models.DeviceId(id="0123456789", kind="imei")


def request(**kw: Any) -> models.SMSSendRequest:
    base: dict[str, Any] = {"account_name": "0252012345-00001", "sms_message": "hi", "device_ids": (DEVICE,)}
    base.update(kw)
    return models.SMSSendRequest(**base)


def test_valid_request_serialises_camel_case() -> None:
    """A valid request passes validation and keeps leading zeros on the wire."""
    req = request(custom_fields=(models.CustomField("k", "v"),))
    req.validate()
    assert req.to_wire() == {
        "accountName": "0252012345-00001",
        "smsMessage": "hi",
        "dataEncoding": "7-bit",
        "deviceIds": [{"id": "0123456789", "kind": "imei"}],
        "customFields": [{"key": "k", "value": "v"}],
    }


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"account_name": ""}, "accountName"),
        ({"account_name": "ab"}, "accountName"),
        ({"account_name": "acct/../x"}, "accountName"),
        ({"sms_message": ""}, "smsMessage"),
        ({"sms_message": "x" * 161}, "161"),
        ({"sms_message": "x" * 141, "data_encoding": "8-bit-ASCII"}, "141"),
        ({"sms_message": "é" * 71, "data_encoding": "8-bit-UTF-8"}, "142"),
        ({"data_encoding": "16-bit"}, "dataEncoding"),
        ({"device_ids": ()}, "deviceIds"),
        ({"device_ids": (models.DeviceId("12 34", "imei"),)}, "device id"),
        ({"device_ids": (models.DeviceId("1234", "phone"),)}, "device kind"),
    ],
)
def test_invalid_request_is_refused(kw: dict[str, Any], fragment: str) -> None:
    """Each invalid field raises ValidationError naming the problem."""
    with pytest.raises(errors.ValidationError, match=fragment):
        request(**kw).validate()


def test_length_limits_are_inclusive() -> None:
    """Exactly 160 (7-bit) and 140 (8-bit) characters are allowed."""
    request(sms_message="x" * 160).validate()
    request(sms_message="x" * 140, data_encoding="8-bit-DATA").validate()


@pytest.mark.parametrize("text", ["温度", "temp 20°C", "naïve", "\u00a0x", "emoji \U0001f600", "`tick`"])
def test_seven_bit_refuses_characters_outside_the_gsm_alphabet(text: str) -> None:
    """A 7-bit message with a character outside GSM 03.38 (basic set + extension) is refused, named."""
    with pytest.raises(errors.ValidationError, match="GSM 7-bit alphabet"):
        request(sms_message=text).validate()


def test_seven_bit_accepts_the_gsm_alphabet_and_counts_extension_characters_twice() -> None:
    """GSM-only characters pass; each extension character (e.g. €, [) takes two of the 160 septets."""
    request(sms_message="Ünïts: 20 °", data_encoding="8-bit-UTF-8").validate()
    request(sms_message="@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà").validate()
    request(sms_message="€" * 80).validate()
    with pytest.raises(errors.ValidationError, match="161"):
        request(sms_message="€" * 80 + "x").validate()
    assert gsm.septets("[a]{}") == 9


def test_eight_bit_ascii_refuses_non_ascii() -> None:
    """8-bit-ASCII carries only ASCII: a non-ASCII character is refused before sending."""
    with pytest.raises(errors.ValidationError, match="not ASCII"):
        request(sms_message="温度", data_encoding="8-bit-ASCII").validate()


def test_group_name_replaces_device_ids() -> None:
    """A group name alone is a valid target."""
    request(device_ids=(), group_name="fleet").validate()


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ([1, 2], "JSON array"),
        ("text", "JSON string"),
        (None, "JSON null"),
        ({"message": "x", "timestamp": "t"}, "deviceIds missing"),
        ({"deviceIds": "x", "message": "x", "timestamp": "t"}, "not a list"),
        ({"deviceIds": [], "message": "x", "timestamp": "t"}, "deviceIds is empty"),
        ({"deviceIds": [{"id": 5, "kind": "imei"}], "message": "x", "timestamp": "t"}, "deviceIds[0]"),
        ({"deviceIds": [{"id": "1", "kind": "imei"}], "message": 7, "timestamp": "t"}, "message is a JSON"),
        ({"deviceIds": [{"id": "1", "kind": "imei"}], "message": "x"}, "timestamp missing"),
        ({"deviceIds": [{"id": "1", "kind": "imei"}], "message": "x", "timestamp": True}, "timestamp is a"),
    ],
)
def test_malformed_message_keeps_raw_and_lists_problems(wire: Any, problem: str) -> None:
    """Parsing a bad message never raises: it keeps the raw value and names what is wrong."""
    msg = models.SMSMessage.from_wire(wire)
    assert msg.raw is wire
    assert any(problem in p for p in msg.problems), msg.problems


def test_well_formed_message_has_no_problems() -> None:
    """A documented message parses fully; device kinds are lower-cased, ids keep leading zeros."""
    wire = {
        "deviceIds": [{"id": "00042", "kind": "IMEI"}],
        "message": "m",
        "timestamp": "2016-01-01T12:29:49-08:00",
    }
    msg = models.SMSMessage.from_wire(wire)
    assert msg.problems == ()
    assert msg.device_ids == (models.DeviceId("00042", "imei"),)
    assert msg.to_wire() is wire


@pytest.mark.parametrize("body", [[], "x", {"messages": {}}, {"messages": [], "hasMoreData": "yes"}])
def test_bad_history_envelope_raises(body: Any) -> None:
    """A history body whose envelope is wrong raises ResponseFormatError."""
    with pytest.raises(errors.ResponseFormatError):
        models.SMSMessagesQueryResult.from_wire(body)


def test_history_envelope_tolerates_bad_messages() -> None:
    """One bad message in a good envelope does not lose the others."""
    result = models.SMSMessagesQueryResult.from_wire({"messages": [1, {"message": "x"}], "hasMoreData": True})
    assert len(result.messages) == 2
    assert result.has_more_data is True


@pytest.mark.parametrize("body", [[], "x", {"messages": {}}, {"messages": [], "hasMoreData": "yes"}])
def test_history_envelope_alone_refuses_the_same_bodies(body: Any) -> None:
    """The client's envelope check (messages left unread) refuses what from_wire refuses."""
    with pytest.raises(errors.ResponseFormatError):
        models.history_envelope(body)


def test_lazy_messages_read_like_the_parsed_tuple() -> None:
    """A client page's Messages gives the very SMSMessage values from_wire gives, problems included."""
    good = {"deviceIds": [{"id": "00042", "kind": "IMEI"}], "message": "m", "timestamp": "t"}
    records = [good, 1, {"message": "x"}]
    parsed = models.SMSMessagesQueryResult.from_wire({"messages": records}).messages
    lazy = models.Messages(records)
    assert len(lazy) == 3 and lazy._built is None  # nothing built for len()
    assert lazy == parsed and parsed == lazy and lazy == models.Messages(records)
    assert list(lazy) == list(parsed) and lazy[1:] == parsed[1:] and lazy[-1] == parsed[-1]
    assert lazy[0].device_ids == (models.DeviceId("00042", "imei"),) and lazy[0].raw is good
    assert lazy[1].problems and lazy[2].problems
    assert lazy * 2 == parsed * 2 and lazy + parsed == parsed + parsed and parsed + lazy == parsed * 2
    assert repr(lazy) == repr(parsed)
    assert lazy != [*parsed]  # like a tuple: not equal to a list
    page = models.HistoryPage("acct", lazy, False, 200, None)
    assert page == models.HistoryPage("acct", parsed, False, 200, None)


@pytest.mark.parametrize("body", [{}, {"requestId": 5}, []])
def test_send_result_requires_request_id(body: Any) -> None:
    """A send response without a string requestId is a format error."""
    with pytest.raises(errors.ResponseFormatError):
        models.DeviceManagementResult.from_wire(body)


def test_history_page_final_when_no_next() -> None:
    """A page without a next token is the final block."""
    page = models.HistoryPage("acct", (), False, 200, None)
    assert page.is_final
    assert not models.HistoryPage("acct", (), True, 202, "abc").is_final


_texts = st.sampled_from(["hi", "", "\U0001f600", "a\x00b", "x\ud800"])
_values = st.one_of(_texts, st.none(), st.integers(0, 2), st.lists(_texts, max_size=1))
_mostly_texts = st.one_of(_texts, _texts, _texts, _values)
_device = st.fixed_dictionaries({"id": _texts, "kind": st.sampled_from(["imei", "IMEI", "Serial"])})
_odd_device = st.one_of(
    st.fixed_dictionaries({"id": _values, "kind": _values}), st.fixed_dictionaries({"kind": _texts}), _values
)
_devices = st.one_of(st.lists(st.one_of(_device, _device, _device, _odd_device), max_size=3), _values)
# Mostly near the documented shape, where the shortcut and the checked path part ways.
_near_documented = st.fixed_dictionaries(
    {
        "deviceIds": st.lists(st.one_of(_device, _device, _device, _odd_device), min_size=1, max_size=3),
        "message": _mostly_texts,
        "timestamp": _mostly_texts,
    },
    optional={"extra": _values},
)
_wire_messages = st.one_of(
    _near_documented,
    _near_documented,
    st.fixed_dictionaries({"deviceIds": _devices, "message": _values, "timestamp": _values}),
    st.fixed_dictionaries({}, optional={"deviceIds": _devices, "message": _values, "timestamp": _values}),
    _values,
)


@settings(max_examples=400)
@given(_wire_messages)
@example({"deviceIds": [{"id": "1", "kind": "IMEI"}, {"id": "2"}], "message": "m", "timestamp": "t"})
@example({"deviceIds": [{"id": "1", "kind": "IMEI"}], "message": "m", "timestamp": "t"})
def test_from_wire_fast_path_matches_the_checked_path(obj: Any) -> None:
    """The well-formed shortcut of from_wire gives exactly what the problem-naming path gives."""
    fast = models.SMSMessage.from_wire(obj)
    checked = models.SMSMessage._from_wire_checked(obj)
    assert fast == checked
    assert fast.raw is obj


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
def test_names_with_a_trailing_newline_are_refused(suffix: str) -> None:
    """Account names and device ids are matched whole: a trailing newline no longer slips through."""
    with pytest.raises(errors.ValidationError, match="accountName"):
        request(account_name="0252012345-00001" + suffix).validate()
    with pytest.raises(errors.ValidationError, match="device id"):
        request(device_ids=(models.DeviceId(id="0123456789" + suffix, kind="imei"),)).validate()
