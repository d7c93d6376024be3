"""Reading a pushed callback body: credentials, shapes, identity and the redacted body."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from sync_worker import callbacks, errors, models, rows, secret

ACCOUNT = "0252012345-00001"
CREDS = callbacks.ListenerCredentials("listener", secret.Secret("current-password"), None)
ROTATING = callbacks.ListenerCredentials(
    "listener", secret.Secret("current-password"), secret.Secret("previous-password")
)
WHEN = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)
MESSAGE = {
    "deviceIds": [{"id": "990000862471854", "kind": "imei"}],
    "message": "temp=21.5",
    "timestamp": "2026-02-01T11:59:58-05:00",
}


def body(**fields: Any) -> dict[str, Any]:
    return {"username": "listener", "password": "current-password", **fields}


def test_credentials_accept_only_both_fields_right_and_the_previous_password_in_rotation() -> None:
    """Username and password must both match; the previous password only when configured."""
    assert CREDS.accepts("listener", "current-password")
    assert not CREDS.accepts("listener", "previous-password")
    assert not CREDS.accepts("someone", "current-password")
    assert not CREDS.accepts("listener", None)
    assert not CREDS.accepts(["listener"], "current-password")
    assert not CREDS.accepts("listener", "")
    assert ROTATING.accepts("listener", "previous-password")
    assert ROTATING.accepts("listener", "current-password")


def test_credentials_never_show_in_repr() -> None:
    """The dataclass repr hides the passwords (Secret)."""
    assert "current-password" not in repr(ROTATING)
    assert "previous-password" not in repr(ROTATING)


def test_read_refuses_bad_credentials_and_another_account() -> None:
    """A wrong password is 403 bad_credentials; an accountName other than the URL's is 403."""
    with pytest.raises(errors.CallbackRefusedError) as refused:
        callbacks.read(body(password="nope"), ACCOUNT, CREDS, received_at=WHEN)
    assert (refused.value.status, refused.value.reason) == (403, "bad_credentials")
    with pytest.raises(errors.CallbackRefusedError) as mismatch:
        callbacks.read(body(accountName="0000000000-00009"), ACCOUNT, CREDS, received_at=WHEN)
    assert (mismatch.value.status, mismatch.value.reason) == (403, "account_mismatch")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"{" * 5000])
def test_decode_refuses_what_is_not_a_json_object(raw: bytes) -> None:
    """Non-JSON, arrays, strings and nesting beyond the decoder are refused with 400."""
    with pytest.raises(errors.CallbackRefusedError) as refused:
        callbacks.decode(raw)
    assert refused.value.status == 400


def test_envelope_message_gets_the_polled_message_key() -> None:
    """The history message inside the envelope has the very key the poller would give it."""
    read = callbacks.read(
        body(
            requestId="r-1",
            deviceIds=MESSAGE["deviceIds"],
            enhancedConnectivityResponse=MESSAGE,
            callbackCount=2,
        ),
        ACCOUNT,
        CREDS,
        received_at=WHEN,
    )
    assert (read.shape, read.request_id, read.callback_count, read.problem) == ("envelope", "r-1", 2, None)
    polled = rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(MESSAGE)])
    pushed = rows.build_rows(ACCOUNT, read.messages)
    assert [r.message_key for r in pushed] == [r.message_key for r in polled]
    assert pushed[0].problems == ()


def test_envelope_fills_devices_and_timestamp_the_inner_object_lacks() -> None:
    """deviceIds and timestamp of the envelope complete an inner object holding only the text."""
    read = callbacks.read(
        body(
            deviceIds=MESSAGE["deviceIds"],
            timestamp=MESSAGE["timestamp"],
            smsResponse={"message": "temp=21.5"},
        ),
        ACCOUNT,
        CREDS,
        received_at=WHEN,
    )
    polled = rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(MESSAGE)])
    assert [r.message_key for r in rows.build_rows(ACCOUNT, read.messages)] == [polled[0].message_key]


def test_messages_list_shape_reads_every_message() -> None:
    """A history-like messages list yields one message each, malformed ones kept with problems."""
    read = callbacks.read(body(messages=[MESSAGE, "odd"]), ACCOUNT, CREDS, received_at=WHEN)
    assert read.shape == "messages"
    assert [m.problems == () for m in read.messages] == [True, False]


def test_flat_shape_without_timestamp_takes_its_identity_from_the_request_id_or_the_clock() -> None:
    """No timestamp: the requestId makes redeliveries one key; without it every delivery differs."""
    flat = body(deviceIds=MESSAGE["deviceIds"], message="ALARM")
    with_id = {**flat, "requestId": "r-7"}

    def key(obj: dict[str, Any], when: dt.datetime) -> str:
        read = callbacks.read(obj, ACCOUNT, CREDS, received_at=when)
        assert read.shape == "flat"
        return rows.build_rows(ACCOUNT, read.messages)[0].message_key

    later = WHEN + dt.timedelta(seconds=1)
    assert key(with_id, WHEN) == key(with_id, later)
    assert key(flat, WHEN) != key(flat, later)
    read = callbacks.read(flat, ACCOUNT, CREDS, received_at=WHEN)
    assert any("receipt time" in p for p in read.messages[0].problems)


def test_unknown_shape_is_reported_by_its_keys_without_values_or_credentials() -> None:
    """Anything else is 'unknown', described by its top-level keys only."""
    read = callbacks.read(body(status="ok", deliveryReceipt={"x": 1}), ACCOUNT, CREDS, received_at=WHEN)
    assert (read.shape, read.messages) == ("unknown", ())
    assert read.problem == "no known message shape (keys: deliveryReceipt, status)"


def test_redact_keeps_every_other_byte_and_falls_back_for_escaped_keys() -> None:
    """The password value is replaced in place; an escaped key forces a re-serialised body."""
    raw = b'{"username": "listener",  "password" : "current-password", "message": "password"}'
    kept, exact = callbacks.redact(raw, json.loads(raw))
    assert exact
    assert kept == raw.replace(b"current-password", callbacks.REDACTED.encode())
    escaped = b'{"username":"listener","p\\u0061ssword":"current-password","message":"hi"}'
    kept, exact = callbacks.redact(escaped, json.loads(escaped))
    assert not exact
    assert b"current-password" not in kept
    assert json.loads(kept)["password"] == callbacks.REDACTED


def nidd(inner: dict[str, Any], **outer: Any) -> dict[str, Any]:
    """The device-originated NIDD callback of the API notes: a ...Response inside a ...Response."""
    return body(
        requestId="595f5c44-c31c-4552-8670-020a1545a84d",
        deviceIds=[{"id": "990000862471854", "kind": "IMEI"}],
        niddResponse={"niddMONotificationResponse": inner, **outer},
        callbackCount=1,
        maxCallbackThreshold=2,
    )


def test_a_response_nested_in_a_response_is_read_and_upper_case_kinds_match_the_polled_key() -> None:
    """The NIDD nesting with upper-case kinds (and a timestamp) reads as an envelope whose message has
    the key the poller gives the same message with lower-case kinds."""
    inner = {
        "accountName": ACCOUNT,
        "message": MESSAGE["message"],
        "timestamp": MESSAGE["timestamp"],
        "deviceIds": [{"id": "990000862471854", "kind": "IMEI"}],
    }
    read = callbacks.read(nidd(inner), ACCOUNT, CREDS, received_at=WHEN)
    assert (read.shape, read.problem) == ("envelope", None)
    polled = rows.build_rows(ACCOUNT, [models.SMSMessage.from_wire(MESSAGE)])
    pushed = rows.build_rows(ACCOUNT, read.messages)
    assert [r.message_key for r in pushed] == [r.message_key for r in polled]
    assert (pushed[0].device_kind, pushed[0].problems) == ("imei", ())


def test_a_nested_response_without_timestamp_takes_the_request_id_identity_and_fills_from_outer_levels() -> (
    None
):
    """No timestamp (as in the published NIDD example): read, devices from the envelope, identity from
    requestId, and a nested accountName naming another account is refused like a top-level one."""
    read = callbacks.read(nidd({"message": "hello"}), ACCOUNT, CREDS, received_at=WHEN)
    assert read.shape == "envelope"
    (message,) = read.messages
    assert message.device_ids == (models.DeviceId("990000862471854", "imei"),)
    assert any("requestId" in p for p in message.problems)
    with pytest.raises(errors.CallbackRefusedError) as refused:
        callbacks.read(
            nidd({"message": "x", "accountName": "0252012345-00009"}), ACCOUNT, CREDS, received_at=WHEN
        )
    assert refused.value.reason == "account_mismatch"


def test_a_response_nested_deeper_than_the_limit_or_without_message_stays_unknown() -> None:
    """...Response objects without a message, or nested past the limit, are kept as unknown, not guessed."""
    deep: dict[str, Any] = {"message": "too deep"}
    for level in range(6):
        deep = {f"level{level}Response": deep}
    for shape in (body(aResponse={"bResponse": {"text": "no message"}}), body(**deep)):
        assert callbacks.read(shape, ACCOUNT, CREDS, received_at=WHEN).shape == "unknown"
