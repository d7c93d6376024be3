"""The one exception hierarchy of the project.

Split by what the caller should do:

* ``TransientError``: try again later (maybe after ``retry_after`` seconds).
* ``PermanentError``: retrying will not help; a person or a code change must act.

Library errors (requests, psycopg, tomllib...) are wrapped at the boundary with
``raise ... from exc`` so callers only ever catch ``SyncWorkerError``. No message
built here may contain a credential: errors carry status codes and the vendor's
error codes, never headers or request bodies.
"""

from __future__ import annotations

import datetime
import hashlib


class SyncWorkerError(Exception):
    """Root of every error this package raises on purpose."""


class TransientError(SyncWorkerError):
    """A failure that may go away by itself; safe to retry later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SyncWorkerError):
    """A failure that retrying will not fix."""


# --- configuration -------------------------------------------------------


class ConfigError(PermanentError):
    """Invalid or missing settings; the message names the variable."""


class ValidationError(PermanentError):
    """A request failed local validation; nothing was sent."""


# --- the ThingSpace API --------------------------------------------------


class ApiError(SyncWorkerError):
    """Common data of every error that came from (or on the way to) ThingSpace.

    ``status`` is None when no HTTP response arrived (connection error, timeout).
    ``error_code`` is the M2M ``errorCode`` without its service prefix
    (``SessionToken.Expired``), the gateway ``fault`` code, or the OAuth ``error``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        operation: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # TransientError.__init__ takes retry_after; PermanentError ignores it.
        Exception.__init__(self, message)
        self.status = status
        self.error_code = error_code
        self.error_message = error_message
        self.operation = operation
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [str(self.args[0]) if self.args else type(self).__name__]
        if self.operation:
            parts.append(f"operation={self.operation}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.error_code:
            parts.append(f"error_code={self.error_code}")
        if self.error_message:
            parts.append(f"error_message={self.error_message!r}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after:g}s")
        return " ".join(parts)


class ApiTransientError(ApiError, TransientError):
    """5xx, 408, a timeout or a dropped connection: retry with backoff."""


class RateLimitedError(ApiTransientError):
    """HTTP 429; ``retry_after`` holds the server's ``Retry-After`` when sent."""


class ApiPermanentError(ApiError, PermanentError):
    """A 4xx (other than 408/429) the caller must not blindly retry."""


class InvalidCursorError(ApiPermanentError):
    """The API rejected a stored ``next`` token (stale, expired or unknown)."""


class ResponseFormatError(ApiPermanentError):
    """The response does not have the documented shape (body or headers)."""


class MalformedBlockError(ResponseFormatError):
    """A history block whose body cannot be read, although its paging is valid.

    The block can be acknowledged safely (``next_token`` came from a valid
    ``Location``, or the status was a final 200), so the sync quarantines the raw
    body and moves on instead of letting one bad block stop the queue for good.
    ``body`` keeps at most ``MAX_KEPT_BODY`` bytes of what arrived; ``body_size``
    is the full length and ``body_sha256`` the digest of the full body. The body
    is never part of ``str()`` or ``repr()``: it is data, not a message.
    """

    MAX_KEPT_BODY = 16 * 1024 * 1024

    def __init__(
        self,
        message: str,
        *,
        body: bytes,
        problem: str,
        next_token: str | None,
        request_next: str | None,
        status: int | None = None,
        operation: str | None = None,
        received_at: datetime.datetime | None = None,
    ) -> None:
        super().__init__(message, status=status, operation=operation)
        self.received_at = received_at or datetime.datetime.now(datetime.UTC)
        self.body = bytes(body[: self.MAX_KEPT_BODY])
        self.body_size = len(body)
        self.body_sha256 = hashlib.sha256(body).hexdigest()
        self.problem = problem
        self.next_token = next_token
        self.request_next = request_next

    @property
    def body_truncated(self) -> bool:
        return self.body_size > len(self.body)


class UnreadableAnswerError(ApiTransientError):
    """A 200/202 history answer that could not be read, while attempts remain.

    Transient first: the same request is sent again (its ``next`` only
    acknowledges a block that is already committed), and the ``next`` token of
    the unreadable answer is never followed. ``block`` is the answer in the form
    the sync quarantines once attempts run out. ``paging_error`` is set when the
    answer's paging was unusable too (a bad or missing ``Location``); it is what
    is raised once attempts run out, since nothing could be acknowledged safely.
    """

    def __init__(
        self,
        message: str,
        *,
        block: MalformedBlockError,
        paging_error: ResponseFormatError | None = None,
        status: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message, status=status, operation=operation)
        self.block = block
        self.paging_error = paging_error
        # Attempts the request got, set by the client when it gives up.
        self.attempts = 1


class AcknowledgementRefusedError(PermanentError):
    """The acknowledgement gate (``gate.release``) refused to send a block's ``next`` token: the
    block is neither committed nor quarantined. A bug of the caller; nothing was acknowledged."""


class UnsafeLocationError(ResponseFormatError):
    """A ``Location`` header pointed elsewhere or carried a malformed token."""


class AuthError(ApiPermanentError):
    """Credentials were refused; an operator must act."""


class LoginFailedError(AuthError):
    """The session login was refused (a 4xx verdict on the credentials). Never
    retried within a run: five failed logins in a row lock the ThingSpace user
    until vendor support unlocks it, and the login guard counts this one."""


class LoginThrottledError(RateLimitedError):
    """The session login got 429 or 408: not a verdict on the credentials.

    The login guard does not count it and nothing latches; the caller backs off
    (``retry_after`` when the platform sent one) and logs in again later."""


class LoginGuardTrippedError(AuthError):
    """The login guard refused to attempt a login: the failed logins recorded for
    the ThingSpace user leave no safe headroom for these credentials. It lifts
    after new credentials (within the vendor's ceiling) or ``sync-worker auth reset``."""


# --- the database --------------------------------------------------------


class StoreError(SyncWorkerError):
    """Base for database errors."""


class DatabaseUnavailableError(StoreError, TransientError):
    """The database could not be reached or the connection dropped."""


class SchemaError(StoreError, PermanentError):
    """The schema is older than this code needs: run ``sync-worker migrate``."""


class MigrationError(StoreError, PermanentError):
    """A migration cannot be applied (e.g. an applied migration was edited)."""


# --- push mode (the callback receiver) -------------------------------------------


class CallbackRefusedError(PermanentError):
    """A callback request the receiver refuses (``status``: the HTTP answer; ``reason``: a short kind).

    The message names the reason and never the body or a credential.
    """

    def __init__(self, status: int, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.status = status
        self.reason = reason
