"""What the simulator puts on the wire: error codes, bodies, tokens, header sets."""

from __future__ import annotations

import email.utils
import http
import json
import secrets
import string
import time
from collections.abc import Callable
from typing import Any, Final

# Names used for stats, scripts and fault targeting.
PATH_KINDS: Final = (
    "token",
    "revoke",
    "login",
    "logout",
    "send",
    "history",
    "start_callbacks",
    "register_callback",
    "list_callbacks",
    "deregister_callback",
)

ERR_PREFIX: Final = "UnifiedWebService.REQUEST_FAILED."
CODE_INVALID_CREDENTIALS: Final = ERR_PREFIX + "InvalidCredentials"
CODE_USER_LOCKED: Final = ERR_PREFIX + "UserLocked"
CODE_SESSION_EXPIRED: Final = ERR_PREFIX + "SessionToken.Expired"
CODE_ACCOUNT_NOT_FOUND: Final = ERR_PREFIX + "AccountNotFound"
CODE_INVALID_NEXT_TOKEN: Final = ERR_PREFIX + "InvalidNextToken"
CODE_INVALID_REQUEST: Final = ERR_PREFIX + "InvalidRequest"
CODE_UNEXPECTED: Final = ERR_PREFIX + "UnexpectedError"

TOKEN_ALPHABET: Final = string.ascii_letters + string.digits
REASONS: Final = {
    code: phrase.encode("ascii") for code, phrase in ((s.value, s.phrase) for s in http.HTTPStatus)
}
JSON_HEADERS: Final = (("Content-Type", "application/json"),)
HTML_HEADERS: Final = (("Content-Type", "text/html; charset=utf-8"),)

# (status, body, headers, step to run once the reply is on the socket)
Reply = tuple[int, bytes, list[tuple[str, str]], Callable[[], None] | None]


def dumps(obj: Any) -> bytes:
    # ASCII escapes keep lone surrogates and NULs servable exactly as injected.
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def m2m_error(code: str, message: str) -> bytes:
    return dumps({"errorCode": code, "errorMessage": message})


def json_reply(status: int, body: bytes) -> Reply:
    return status, body, list(JSON_HEADERS), None


SESSION_EXPIRED_BODY: Final = m2m_error(CODE_SESSION_EXPIRED, "The Session has expired.")
BEARER_FAULT_BODY: Final = dumps(
    {
        "fault": {
            "code": 900901,
            "message": "Invalid Credentials",
            "description": "Invalid Credentials. Make sure you have given the correct access token",
        }
    }
)
HTML_ERROR: Final = (
    "<html><head><title>{code} {phrase}</title></head><body><center><h1>{code} {phrase}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)


def new_token(length: int = 20) -> str:
    """A random token of letters and digits, like the platform's opaque tokens."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def http_date(seconds_from_now: float) -> str:
    """An RFC 7231 date for ``Retry-After`` tests."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)
