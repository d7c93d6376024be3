"""``POST /sms`` (send_sms_to_device) request validation, as strict as the platform's."""

from __future__ import annotations

import json
from typing import Any, Final

_SMS_LIMITS: Final = {"7-bit": 160, "8-bit-ASCII": 140, "8-bit-UTF-8": 140, "8-bit-DATA": 140}


def parse_send(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """The send request and ``""``, or ``None`` and the ``InvalidRequest`` message."""
    try:
        req = json.loads(body)
    except ValueError:
        return None, "Malformed request body."
    if not isinstance(req, dict):
        return None, "Malformed request body."
    account = req.get("accountName")
    if not isinstance(account, str) or not account:
        return None, "accountName is required."
    text = req.get("smsMessage")
    if not isinstance(text, str) or not text:
        return None, "smsMessage is required."
    encoding = req.get("dataEncoding", "7-bit")
    limit = _SMS_LIMITS.get(encoding) if isinstance(encoding, str) else None
    if limit is None:
        return None, "dataEncoding is invalid."
    length = len(text.encode("utf-8")) if encoding == "8-bit-UTF-8" else len(text)
    if length > limit:
        return None, f"smsMessage exceeds {limit} characters."
    devices = req.get("deviceIds")
    if devices is not None and (
        not isinstance(devices, list)
        or not all(
            isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("kind"), str)
            for d in devices
        )
    ):
        return None, "deviceIds is invalid."
    if not devices and not req.get("groupName"):
        return None, "deviceIds or groupName is required."
    return req, ""
