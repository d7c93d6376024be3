"""Typed models of the ThingSpace SMS API.

camelCase on the wire, snake_case in Python. Parsing a *message* never raises:
the API types every ``SMSMessage`` field as optional, and the store must keep
whatever arrived, so a message that does not fit carries its problems in
``problems`` and the original object in ``raw``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, overload

from sync_worker import errors, gate, gsm, secret, urls

DATA_ENCODINGS: Final = ("7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA")
DataEncoding = Literal["7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA"]
# 160 septets of the GSM 7-bit alphabet (an extension character takes two), 140 octets otherwise.
MAX_LENGTH: Final[Mapping[str, int]] = {
    "7-bit": 160,
    "8-bit-ASCII": 140,
    "8-bit-UTF-8": 140,
    "8-bit-DATA": 140,
}
DEVICE_KINDS: Final = frozenset({"esn", "eid", "iccid", "imei", "mdn", "meid", "msisdn"})
ACCOUNT_NAME_RE: Final = re.compile(r"^[A-Za-z0-9-]{3,32}$")
_DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9]{1,32}$")


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceId:
    id: str
    kind: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind}

    def validate(self) -> None:
        if not isinstance(self.id, str) or not _DEVICE_ID_RE.fullmatch(self.id):
            raise errors.ValidationError(
                f"device id {self.id!r} is not 1-32 letters or digits (leading zeros are kept)"
            )
        if not isinstance(self.kind, str) or self.kind.lower() not in DEVICE_KINDS:
            raise errors.ValidationError(
                f"device kind {self.kind!r} is not one of {', '.join(sorted(DEVICE_KINDS))}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class CustomField:
    key: str
    value: str

    def to_wire(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value}


@dataclasses.dataclass(frozen=True, slots=True)
class SMSSendRequest:
    account_name: str
    sms_message: str
    device_ids: tuple[DeviceId, ...] = ()
    group_name: str | None = None
    service_plan: str | None = None
    data_encoding: DataEncoding = "7-bit"
    custom_fields: tuple[CustomField, ...] = ()

    def validate(self) -> None:
        """Raise ``errors.ValidationError`` when the request must not be sent."""
        if not self.account_name or not isinstance(self.account_name, str):
            raise errors.ValidationError("accountName is required")
        if not ACCOUNT_NAME_RE.fullmatch(self.account_name):
            raise errors.ValidationError(
                f"accountName {self.account_name!r} must be 3-32 letters, digits or '-'"
            )
        if not self.sms_message or not isinstance(self.sms_message, str):
            raise errors.ValidationError("smsMessage is required")
        if self.data_encoding not in MAX_LENGTH:
            raise errors.ValidationError(
                f"dataEncoding {self.data_encoding!r} is not one of {', '.join(DATA_ENCODINGS)}"
            )
        limit = MAX_LENGTH[self.data_encoding]
        if self.data_encoding == "7-bit":
            try:
                length = gsm.septets(self.sms_message)
            except ValueError as exc:
                raise errors.ValidationError(
                    f"smsMessage cannot be sent as 7-bit: {exc}; use --encoding 8-bit-UTF-8"
                ) from exc
        elif self.data_encoding == "8-bit-UTF-8":
            length = len(self.sms_message.encode("utf-8"))
        elif self.data_encoding == "8-bit-ASCII" and not self.sms_message.isascii():
            raise errors.ValidationError("smsMessage is not ASCII; use --encoding 8-bit-UTF-8")
        else:
            length = len(self.sms_message)
        if length > limit:
            raise errors.ValidationError(
                f"smsMessage is {length} long; {self.data_encoding} allows at most {limit}"
            )
        if not self.device_ids and not self.group_name:
            raise errors.ValidationError("give deviceIds or groupName")
        for device in self.device_ids:
            device.validate()

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accountName": self.account_name,
            "smsMessage": self.sms_message,
            "dataEncoding": self.data_encoding,
        }
        if self.device_ids:
            body["deviceIds"] = [d.to_wire() for d in self.device_ids]
        if self.group_name is not None:
            body["groupName"] = self.group_name
        if self.service_plan is not None:
            body["servicePlan"] = self.service_plan
        if self.custom_fields:
            body["customFields"] = [f.to_wire() for f in self.custom_fields]
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class SMSMessage:
    """One mobile-originated message as the history endpoint returned it.

    ``raw`` is the JSON value exactly as decoded from the response (usually a
    dict, but anything when the API misbehaves). ``problems`` lists what did not
    fit the documented model; an empty tuple means a well-formed message.
    """

    device_ids: tuple[DeviceId, ...]
    message: str | None
    timestamp: str | None
    raw: Any
    problems: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, obj: Any) -> SMSMessage:
        # Nearly every message is well formed: settle that with exact type checks
        # and no bookkeeping; anything else takes the path that names each problem.
        if type(obj) is dict:
            raw_devices = obj.get("deviceIds")
            message = obj.get("message")
            timestamp = obj.get("timestamp")
            if type(raw_devices) is list and raw_devices and type(message) is str and type(timestamp) is str:
                devices: list[DeviceId] = []
                for item in raw_devices:
                    if type(item) is not dict:
                        break
                    ident = item.get("id")
                    kind = item.get("kind")
                    if type(ident) is not str or type(kind) is not str:
                        break
                    devices.append(DeviceId(ident, kind.lower()))
                else:
                    return cls(tuple(devices), message, timestamp, obj)
        return cls._from_wire_checked(obj)

    @classmethod
    def _from_wire_checked(cls, obj: Any) -> SMSMessage:
        problems: list[str] = []
        if not isinstance(obj, dict):
            return cls((), None, None, obj, (f"message is a JSON {gate.json_type(obj)}, not an object",))
        devices: list[DeviceId] = []
        raw_devices = obj.get("deviceIds")
        if raw_devices is None:
            problems.append("deviceIds missing")
        elif not isinstance(raw_devices, list):
            problems.append(f"deviceIds is a JSON {gate.json_type(raw_devices)}, not a list")
        else:
            for i, item in enumerate(raw_devices):
                if (
                    isinstance(item, dict)
                    and isinstance(item.get("id"), str)
                    and isinstance(item.get("kind"), str)
                ):
                    devices.append(DeviceId(id=item["id"], kind=item["kind"].lower()))
                else:
                    problems.append(f"deviceIds[{i}] is not an object with string id and kind")
            if not raw_devices:
                problems.append("deviceIds is empty")
        message = obj.get("message")
        if message is None:
            problems.append("message missing")
        elif not isinstance(message, str):
            problems.append(f"message is a JSON {gate.json_type(message)}, not a string")
            message = None
        timestamp = obj.get("timestamp")
        if timestamp is None:
            problems.append("timestamp missing")
        elif not isinstance(timestamp, str):
            problems.append(f"timestamp is a JSON {gate.json_type(timestamp)}, not a string")
            timestamp = None
        return cls(tuple(devices), message, timestamp, obj, tuple(problems))

    def to_wire(self) -> Any:
        return self.raw


class Messages(Sequence[SMSMessage]):
    """A block's messages, kept as the decoded JSON values; each becomes an ``SMSMessage`` on first use.

    The write path reads ``records`` straight into the statement's columns
    (``rows.build_block``): building one frozen object per message and per device
    only to read them back cost about a tenth of the worker's CPU per block. Any
    other use (indexing, iterating, ``len``, equality with a tuple, ``+`` and ``*``
    giving tuples) sees the same ``SMSMessage`` values ``from_wire`` gives, built once
    for the whole block.
    """

    __slots__ = ("_built", "records")

    def __init__(self, records: Sequence[Any]) -> None:
        self.records: tuple[Any, ...] = tuple(records)
        self._built: tuple[SMSMessage, ...] | None = None

    def _messages(self) -> tuple[SMSMessage, ...]:
        built = self._built
        if built is None:
            # Two threads racing here build equal tuples; either may be kept.
            built = self._built = tuple([SMSMessage.from_wire(r) for r in self.records])
        return built

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> SMSMessage: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[SMSMessage, ...]: ...

    def __getitem__(self, index: int | slice) -> SMSMessage | tuple[SMSMessage, ...]:
        return self._messages()[index]

    def __iter__(self) -> Iterator[SMSMessage]:
        return iter(self._messages())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Messages):
            return self._messages() == other._messages()
        if isinstance(other, tuple):
            return self._messages() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a tuple of messages holding dicts

    def __add__(self, other: tuple[SMSMessage, ...] | Messages) -> tuple[SMSMessage, ...]:
        return self._messages() + tuple(other)

    def __radd__(self, other: tuple[SMSMessage, ...]) -> tuple[SMSMessage, ...]:
        return tuple(other) + self._messages()

    def __mul__(self, count: int) -> tuple[SMSMessage, ...]:
        return self._messages() * count

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return repr(self._messages())


@dataclasses.dataclass(frozen=True, slots=True)
class SMSMessagesQueryResult:
    messages: tuple[SMSMessage, ...]
    has_more_data: bool

    @classmethod
    def from_wire(cls, obj: Any) -> SMSMessagesQueryResult:
        """Parse a history body. A body whose *envelope* is wrong raises
        ``errors.ResponseFormatError``; individual bad messages do not."""
        raw_messages, has_more = history_envelope(obj)
        return cls(tuple(SMSMessage.from_wire(m) for m in raw_messages), has_more)


def history_envelope(obj: Any) -> tuple[list[Any], bool]:
    """A decoded history body's ``messages`` and ``hasMoreData``; ``errors.ResponseFormatError``
    when the envelope is wrong. The messages themselves are not looked at.

    A model-level read of an already decoded value. Whether an *answer* holds the block (and may
    be acknowledged) is decided on its bytes by ``gate.recognise``, which also refuses duplicate
    members, a missing ``hasMoreData`` and paging that disagrees with the status.
    """
    if not isinstance(obj, dict):
        raise errors.ResponseFormatError(f"history body is a JSON {gate.json_type(obj)}, not an object")
    if "messages" not in obj:
        # Never an empty block by default: a body without the list does not hold the block.
        raise errors.ResponseFormatError("history body has no top-level 'messages' member")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise errors.ResponseFormatError(
            f"history body 'messages' is a JSON {gate.json_type(raw_messages)}, not a list"
        )
    has_more = obj.get("hasMoreData", False)
    if not isinstance(has_more, bool):
        raise errors.ResponseFormatError("history body 'hasMoreData' is not a boolean")
    return raw_messages, has_more


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceManagementResult:
    request_id: str

    @classmethod
    def from_wire(cls, obj: Any) -> DeviceManagementResult:
        if not isinstance(obj, dict) or not isinstance(obj.get("requestId"), str):
            raise errors.ResponseFormatError("send response has no string 'requestId'")
        return cls(obj["requestId"])


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectivityManagementSuccessResult:
    success: bool

    @classmethod
    def from_wire(cls, obj: Any) -> ConnectivityManagementSuccessResult:
        if not isinstance(obj, dict) or not isinstance(obj.get("success"), bool):
            raise errors.ResponseFormatError("startCallbacks response has no boolean 'success'")
        return cls(obj["success"])


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPage:
    """One block of the history queue, plus what paging needs.

    ``next`` is the token parsed out of ``Location`` (None on the final block);
    sending it acknowledges *this* block. ``request_next`` is the token that was
    sent to obtain this block (None at the head of the queue).
    """

    account_name: str
    # A tuple, or a ``Messages`` (the client's pages) that the write path reads without objects.
    messages: Sequence[SMSMessage]
    has_more_data: bool
    status: int
    next: str | None
    request_next: str | None = None
    # The answer's bytes as received, kept by reference (no copy) so a block that
    # cannot be stored can still be quarantined exactly.
    body: bytes = dataclasses.field(default=b"", repr=False, compare=False)
    # The acknowledgement gate's record of this block (``gate.Ticket``): the client's pages carry
    # one, and paging sends ``next`` only once it is settled (committed or quarantined).
    ticket: gate.Ticket | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.next is None


@dataclasses.dataclass(frozen=True, slots=True)
class KeptBlock:
    """A history block kept byte for byte in ``sms_quarantine`` instead of being read.

    ``next_token`` is where the cursor may move past it (None after a final 200),
    ``request_token`` the token that fetched it. ``body`` holds at most
    ``errors.MalformedBlockError.MAX_KEPT_BODY`` bytes; size and digest are of the whole.
    """

    http_status: int
    request_token: str | None
    next_token: str | None
    problem: str
    body: bytes
    body_size: int
    body_sha256: str
    received_at: dt.datetime

    @classmethod
    def from_error(cls, error: errors.MalformedBlockError) -> KeptBlock:
        return cls(
            http_status=error.status if error.status is not None else 0,
            request_token=error.request_next,
            next_token=error.next_token,
            problem=error.problem,
            body=error.body,
            body_size=error.body_size,
            body_sha256=error.body_sha256,
            received_at=error.received_at,
        )


# --- callback listeners (push mode) ------------------------------------------------

# Device-originated SMS are pushed to this service's listener after startCallbacks.
SMS_CALLBACK_SERVICE: Final = "EnhancedConnectivityService"
# The vendor's limit on the listener's username and password.
MAX_CALLBACK_CREDENTIAL_LENGTH: Final = 40


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackListener:
    """One registered listener as ``list_registered_callbacks`` returns it.

    The API returns the listener password in clear text; it is held as a ``Secret`` (so the log
    scrubber knows it) and never printed.
    """

    account_name: str
    service_name: str
    url: str
    username: str | None
    password: secret.Secret | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> CallbackListener:
        if not isinstance(obj, dict):
            raise errors.ResponseFormatError(
                f"callback listener is a JSON {gate.json_type(obj)}, not an object"
            )
        fields: dict[str, str | None] = {}
        for key in ("accountName", "serviceName", "url", "username", "password"):
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise errors.ResponseFormatError(f"callback listener '{key}' is not a string")
            fields[key] = value
        if not fields["serviceName"]:
            raise errors.ResponseFormatError("callback listener has no 'serviceName'")
        password = fields["password"]
        return cls(
            account_name=fields["accountName"] or "",
            service_name=fields["serviceName"] or "",
            url=fields["url"] or "",
            username=fields["username"],
            password=secret.Secret(password) if password else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RegisterCallbackRequest:
    """The body of ``register_callback``: the service, the listener URL and its credentials."""

    name: str
    url: str
    username: str | None = None
    password: secret.Secret | None = dataclasses.field(default=None, repr=False)

    def validate(self, *, allow_insecure_loopback: bool = False) -> None:
        """Raise ``errors.ValidationError`` when the request must not be sent.

        ThingSpace calls only https listeners with a certificate from a public CA; plain
        http is accepted for a loopback listener (the simulator) when explicitly allowed.
        """
        if not self.name:
            raise errors.ValidationError("the callback service name is required")
        try:
            parts = urllib.parse.urlsplit(self.url)
            host = parts.hostname or ""
        except ValueError:
            raise errors.ValidationError("the callback URL is not a valid URL") from None
        insecure_ok = allow_insecure_loopback and parts.scheme == "http" and urls.is_loopback_host(host)
        if not host or "@" in parts.netloc or (parts.scheme != "https" and not insecure_ok):
            raise errors.ValidationError("the callback URL must be https://HOST/... (no user or password)")
        for label, value in (("username", self.username), ("password", self.password)):
            text = value.reveal() if isinstance(value, secret.Secret) else value
            if text is not None and len(text) > MAX_CALLBACK_CREDENTIAL_LENGTH:
                raise errors.ValidationError(
                    f"the callback {label} is longer than {MAX_CALLBACK_CREDENTIAL_LENGTH} characters"
                )

    def to_wire(self) -> dict[str, str]:
        body = {"name": self.name, "url": self.url}
        if self.username is not None:
            body["username"] = self.username
        if self.password is not None:
            body["password"] = self.password.reveal()
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackActionResult:
    account_name: str
    service_name: str

    @classmethod
    def from_wire(cls, obj: Any) -> CallbackActionResult:
        if not isinstance(obj, dict):
            raise errors.ResponseFormatError("callback answer is not a JSON object")
        account, service = obj.get("accountName"), obj.get("serviceName")
        if not isinstance(account, str) or not isinstance(service, str):
            raise errors.ResponseFormatError("callback answer has no string 'accountName' and 'serviceName'")
        return cls(account, service)


@dataclasses.dataclass(frozen=True, slots=True)
class KeptCallback:
    """An accepted callback body as ``sms_callback`` keeps it (the password value redacted).

    ``body_exact``: the body is byte for byte what arrived except the password value; False when
    it had to be re-serialised to get the password out. ``shape`` is ``callbacks.SHAPES``.
    """

    account_name: str
    shape: str
    problem: str | None
    request_id: str | None
    callback_count: int | None
    body: bytes = dataclasses.field(repr=False)
    body_exact: bool
    source_address: str | None
    received_at: dt.datetime

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def body_sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()
