"""A pushed callback body: is it ThingSpace's, which account is it for, and what does it say.

ThingSpace does not sign callbacks: it copies the listener's registered username and password
into each body as plain fields. ``ListenerCredentials.accepts`` compares them in constant time
(digests of equal length, both fields always compared), accepting the previous password too
during a rotation window.

The JSON of a device-originated SMS callback is not published, so ``read`` depends on no
field being there. It recognises, in this order (the first that matches wins):

* ``envelope``: the Connectivity callback envelope with a history-shaped message (an object
  with ``message``) under a ``...Response`` key, directly or inside other ``...Response``
  objects (the NIDD callback nests two); the levels around it, innermost first, then the
  envelope fill in the ``deviceIds`` and ``timestamp`` it lacks. Device kinds arrive upper case
  (``IMEI``) where the history has them lower case: the message key reads kinds case-folded
  (``identity.message_key``), so a message pushed with a timestamp and polled too is one row;
* ``messages``: a ``messages`` list of history-shaped messages (the history body's shape);
* ``flat``: ``message`` (or ``smsMessage``) text at the top level with ``deviceIds`` (the only
  published SMS example, from the old SOAP API: no timestamp, no request id);
* ``unknown``: anything else. Kept byte for byte (password value redacted) and reported by the
  receiver, never dropped and never answered with an error the platform would retry forever.

Identity (docs/schema.md, "Pushed messages"): a message with a timestamp gets the history's
message key, so the same message polled later is the same row. Without a timestamp the poller's
copy cannot be matched; the key then includes the envelope's ``requestId`` (a redelivery with the
same id is absorbed), or, without one, the receiver's clock (every delivery is its own row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import re
from typing import Any, Final

from sync_worker import errors, identity, models, secret

REDACTED: Final = "**********"
SHAPES: Final = ("envelope", "messages", "flat", "unknown")
# A "password" member with a string value; inside a JSON string every quote is escaped, so this
# can only match a real member (of the envelope or of a nested object).
_PASSWORD_MEMBER_RE: Final = re.compile(rb'("password"\s*:\s*")((?:[^"\\]|\\.)*)(")')
_MAX_KEYS_REPORTED: Final = 20
# ...Response objects nested in one another; a deeper one is not looked for.
_MAX_RESPONSE_DEPTH: Final = 4
# sms_callback.callback_count is a Postgres integer.
_INT4_MIN: Final = -(2**31)
_INT4_MAX: Final = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ListenerCredentials:
    """What ThingSpace must put in every callback body: the registered username and password."""

    username: str
    password: secret.Secret
    # Accepted too while a rotation is under way (SYNC_CALLBACK_PREVIOUS_PASSWORD).
    previous_password: secret.Secret | None = None

    def accepts(self, username: Any, password: Any) -> bool:
        """Whether the body's fields are ours, in time independent of where they differ."""
        given_user = _digest(username)
        given_password = _digest(password)
        user_ok = hmac.compare_digest(given_user, _digest(self.username))
        current_ok = hmac.compare_digest(given_password, _digest(self.password.reveal()))
        previous = self.previous_password.reveal() if self.previous_password is not None else None
        # Compared even when unset, so a rotation window does not change the timing.
        previous_ok = hmac.compare_digest(given_password, _digest(previous)) and previous is not None
        return (
            isinstance(username, str)
            and isinstance(password, str)
            and user_ok
            and (current_ok or previous_ok)
        )

    def passwords(self) -> tuple[str, ...]:
        found = [self.password.reveal()]
        if self.previous_password is not None:
            found.append(self.previous_password.reveal())
        return tuple(found)


@dataclasses.dataclass(frozen=True, slots=True)
class Callback:
    """A callback that passed authentication, as far as it could be read."""

    account_name: str
    shape: str  # one of SHAPES
    messages: tuple[models.SMSMessage, ...]
    request_id: str | None
    callback_count: int | None
    problem: str | None  # why the shape is unknown; None otherwise
    # Envelope fields that could not be kept as sent (cleaned text, a number out of range).
    notes: tuple[str, ...] = ()

    def report(self) -> str | None:
        """What ``sms_callback.problem`` keeps: why the shape is unknown, then the notes."""
        parts = ([self.problem] if self.problem else []) + list(self.notes)
        return "; ".join(parts) or None


def decode(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``errors.CallbackRefusedError`` (400)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise errors.CallbackRefusedError(400, "not_json", "the callback body is not JSON") from None
    if not isinstance(obj, dict):
        raise errors.CallbackRefusedError(400, "not_an_object", "the callback body is not a JSON object")
    return obj


def read(
    obj: dict[str, Any], account: str, credentials: ListenerCredentials, *, received_at: dt.datetime
) -> Callback:
    """Authenticate a decoded body for ``account`` (taken from the listener URL) and read it.

    Refusals raise ``errors.CallbackRefusedError``: 403 for credentials that are not ours or a
    body naming another account. Anything authenticated yields a ``Callback``, if only an
    ``unknown`` one.
    """
    if not credentials.accepts(obj.get("username"), obj.get("password")):
        raise errors.CallbackRefusedError(403, "bad_credentials", "the callback credentials are not ours")
    for level in [obj, *(_response_path(obj) or [])]:
        named = level.get("accountName")
        if named is not None and named != account:
            raise errors.CallbackRefusedError(
                403, "account_mismatch", "the callback body names another account than its URL"
            )
    request_id, callback_count, notes = _envelope_fields(obj)
    shape, raws = _find_messages(obj)
    if shape == "unknown":
        keys = sorted(str(k) for k in obj if k not in ("username", "password"))
        shown = ", ".join(keys[:_MAX_KEYS_REPORTED]) + (", ..." if len(keys) > _MAX_KEYS_REPORTED else "")
        return Callback(
            account,
            "unknown",
            (),
            request_id,
            callback_count,
            f"no known message shape (keys: {shown or 'none'})",
            notes,
        )
    messages = tuple(_message(raw, request_id, received_at) for raw in raws)
    return Callback(account, shape, messages, request_id, callback_count, None, notes)


def _envelope_fields(obj: dict[str, Any]) -> tuple[str | None, int | None, tuple[str, ...]]:
    """``requestId`` and ``callbackCount`` as the database can hold them, and notes on what changed.

    An authenticated callback must never be unstorable (every retry would fail the same way, and
    the platform would give up on it): text with NUL or lone surrogates is cleaned like message
    text, and a count outside a Postgres integer is kept as NULL.
    """
    notes: list[str] = []
    raw_id = obj.get("requestId")
    request_id: str | None = None
    if isinstance(raw_id, str):
        request_id, changed = identity.clean_text(raw_id)
        if changed:
            notes.append("requestId had NUL or lone surrogate characters; replaced with U+FFFD")
    count = obj.get("callbackCount")
    callback_count: int | None = None
    if isinstance(count, int) and not isinstance(count, bool):
        if _INT4_MIN <= count <= _INT4_MAX:
            callback_count = count
        else:
            # Its size, not its digits: printing a huge int is what Python limits.
            notes.append(
                f"callbackCount ({count.bit_length()} bits) is out of range of an integer; kept as NULL"
            )
    return request_id, callback_count, tuple(notes)


def redact(body: bytes, obj: dict[str, Any]) -> tuple[bytes, bool]:
    """``body`` with every password value replaced, and whether the rest is byte for byte.

    A body whose password member is spelled with escapes the pattern does not see is kept as
    re-serialised JSON instead (``False``): a credential is never stored.
    """
    redacted = _PASSWORD_MEMBER_RE.sub(lambda m: m.group(1) + REDACTED.encode() + m.group(3), body)
    try:
        again = json.loads(redacted)
    except (ValueError, RecursionError):
        again = None
    if isinstance(again, dict) and _passwords_gone(again):
        return redacted, True
    return _reserialised(obj), False


def _passwords_gone(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "password" and child not in (None, REDACTED):
                    return False
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _reserialised(obj: dict[str, Any]) -> bytes:
    def scrub(value: Any) -> Any:
        # Callback bodies are small and were decoded already, so recursion depth is bounded by
        # the decoder's; still, only dicts and lists are walked.
        if isinstance(value, dict):
            return {
                k: (REDACTED if k == "password" and v is not None else scrub(v)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return json.dumps(scrub(obj), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _find_messages(obj: dict[str, Any]) -> tuple[str, list[Any]]:
    path = _response_path(obj)
    if path is not None:
        # The innermost level that has a field gives it: the message object, then the
        # ...Response objects around it, then the envelope.
        inner = path[-1]
        merged: dict[str, Any] = {}
        for field in ("deviceIds", "message", "timestamp"):
            for level in reversed(path):
                if field in level:
                    merged[field] = level[field]
                    break
        merged.update({k: v for k, v in inner.items() if k not in merged})
        return "envelope", [merged]
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        return "messages", list(messages)
    text_key = "message" if "message" in obj else "smsMessage" if "smsMessage" in obj else None
    if text_key is not None and "deviceIds" in obj:
        flat: dict[str, Any] = {"deviceIds": obj["deviceIds"], "message": obj[text_key]}
        if "timestamp" in obj:
            flat["timestamp"] = obj["timestamp"]
        return "flat", [flat]
    return "unknown", []


def _response_path(obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The envelope and the ``...Response`` objects down to the first holding ``message``.

    A device-originated NIDD callback nests one ``...Response`` in another (``niddResponse`` ->
    ``niddMONotificationResponse``); the SMS one may well do the same, so any depth up to
    ``_MAX_RESPONSE_DEPTH`` is searched, depth first in the body's key order. None: no such object.
    """
    stack: list[list[dict[str, Any]]] = [[obj]]
    while stack:
        path = stack.pop()
        children = [
            value
            for key, value in path[-1].items()
            if isinstance(key, str) and key.endswith("Response") and isinstance(value, dict)
        ]
        for child in children:
            if "message" in child:
                return [*path, child]
        if len(path) <= _MAX_RESPONSE_DEPTH:
            stack.extend([*path, child] for child in reversed(children))
    return None


def _message(raw: Any, request_id: str | None, received_at: dt.datetime) -> models.SMSMessage:
    """The model of one pushed message; without a timestamp, an identity that says so."""
    message = models.SMSMessage.from_wire(raw)
    if not isinstance(raw, dict) or raw.get("timestamp") is not None:
        return message
    # identity.message_key hashes the whole raw object of a message with problems: adding the
    # request id (or the receipt time) to it is what decides which deliveries collapse.
    if request_id is not None:
        marked = {**raw, "requestId": request_id}
        note = (
            "pushed without a timestamp: identity from the callback's requestId (cannot match a polled copy)"
        )
    else:
        marked = {**raw, "receivedAt": received_at.isoformat()}
        note = (
            "pushed without a timestamp or requestId: identity from the receipt time "
            "(every delivery is its own row; cannot match a polled copy)"
        )
    again = models.SMSMessage.from_wire(marked)
    return dataclasses.replace(again, problems=(*again.problems, note))


def _digest(value: Any) -> bytes:
    text = value if isinstance(value, str) else ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
