"""What an API answer says: a non-2xx as the project's error, a 2xx body as JSON.

* ``error_code`` of an M2M error is its ``errorCode`` without the service prefix:
  ``UnifiedWebService.REQUEST_FAILED.AccountNotFound`` becomes
  ``REQUEST_FAILED.AccountNotFound``. The prefix is recognised as a first
  dot-separated part that is not UPPER_CASE followed by one that is (service
  names are CamelCase, the categories after them are upper case), so a code sent
  without a prefix (``SessionToken.Expired``) is kept whole. Session expiry is
  detected with ``endswith("SessionToken.Expired")``, so either form matches.
  Gateway faults give their numeric ``fault.code`` as a string; OAuth errors
  give ``error``.
* Codes are matched, never messages. A ``Retry-After`` HTTP-date is measured against the
  server's own ``Date``.
* Bodies are decoded by the stdlib, whatever requests would pick; a body over the size cap
  (``transport.body_over_cap``) is never read as JSON.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import requests

from sync_worker import errors, transport

_SESSION_EXPIRED_SUFFIX: Final = "SessionToken.Expired"
_UPPER_CATEGORY_RE: Final = re.compile(r"^[A-Z0-9_]+$")
T = TypeVar("T")


def error_from_response(
    response: requests.Response, operation: str, *, cursor_sent: bool = False
) -> errors.ApiError:
    """Map a non-2xx response to the error hierarchy (matching codes, never messages)."""
    status = response.status_code
    code, message = _error_fields(response)
    # An HTTP-date is measured against the server's own Date, not our clock: a skewed
    # local clock would otherwise turn "in 30 s" into no wait or into hours.
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now=server_date(response))
    fields: dict[str, Any] = {
        "status": status,
        "error_code": code,
        "error_message": message,
        "operation": operation,
    }
    if status == 429:
        return errors.RateLimitedError("rate limited", retry_after=retry_after, **fields)
    if status == 408 or status >= 500:
        return errors.ApiTransientError("server error", retry_after=retry_after, **fields)
    if status == 401 or (status == 400 and code is not None and code.endswith(_SESSION_EXPIRED_SUFFIX)):
        return errors.AuthError("credentials rejected", **fields)
    if 400 <= status < 500:
        if cursor_sent and status != 403:
            return errors.InvalidCursorError("the next token was rejected", **fields)
        return errors.ApiPermanentError("request rejected", **fields)
    return errors.ResponseFormatError("unexpected status", **fields)


def is_session_expired(error: errors.ApiError) -> bool:
    return (
        error.status == 400
        and error.error_code is not None
        and error.error_code.endswith(_SESSION_EXPIRED_SUFFIX)
    )


def strip_service_prefix(code: str) -> str:
    """``UnifiedWebService.REQUEST_FAILED.X`` -> ``REQUEST_FAILED.X``; unprefixed codes unchanged."""
    head, dot, rest = code.partition(".")
    category = rest.partition(".")[0]
    if dot and not _UPPER_CATEGORY_RE.fullmatch(head) and _UPPER_CATEGORY_RE.fullmatch(category):
        return rest
    return code


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or HTTP-date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            return None
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    current = now if now is not None else datetime.datetime.now(datetime.UTC)
    return max((when - current).total_seconds(), 0.0)


def server_date(response: requests.Response) -> datetime.datetime | None:
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def decode(response: requests.Response, operation: str) -> Any:
    # The stdlib decoder, not response.json(): requests switches to simplejson when it
    # is installed, which refuses NaN and would make one odd message block its queue.
    # RecursionError is how a deeply nested body ends the decoder.
    cap = transport.body_over_cap(response)
    if cap is not None:
        # Only the first bytes were kept: whatever they parse as, it is not the answer.
        raise errors.ResponseFormatError(
            f"response body is larger than {cap} bytes", status=response.status_code, operation=operation
        )
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:
        raise errors.ResponseFormatError(
            "response body is not JSON", status=response.status_code, operation=operation
        ) from exc


def json_object(response: requests.Response, operation: str) -> dict[str, Any]:
    body = decode(response, operation)
    if not isinstance(body, dict):
        raise errors.ResponseFormatError(
            "response body is not a JSON object", status=response.status_code, operation=operation
        )
    return body


def parse(response: requests.Response, operation: str, parser: Callable[[Any], T]) -> T:
    body = decode(response, operation)
    try:
        return parser(body)
    except errors.ResponseFormatError as exc:
        raise errors.ResponseFormatError(str(exc), status=response.status_code, operation=operation) from None


def _error_fields(response: requests.Response) -> tuple[str | None, str | None]:
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return None, None  # an HTML error page: the status says enough
    if not isinstance(body, dict):
        return None, None
    if isinstance(body.get("errorCode"), str):
        message = body.get("errorMessage")
        return strip_service_prefix(body["errorCode"]), message if isinstance(message, str) else None
    fault = body.get("fault")
    if isinstance(fault, dict):
        code = fault.get("code")
        message = fault.get("message")
        return (
            str(code) if isinstance(code, (int, str)) and not isinstance(code, bool) else None,
            message if isinstance(message, str) else None,
        )
    if isinstance(body.get("error"), str):
        description = body.get("error_description")
        return body["error"], description if isinstance(description, str) else None
    return None, None
