"""The API's operations, named as in the vendor SDK: ``SmsController`` and
``ConnectivityCallbacksController`` (``ThingSpaceClient.sms`` / ``.callbacks``).

Each operation checks its arguments, sends its request through the client (``Api``: tokens, the
guarded login, retries) and reads the answer: ``answers`` for plain bodies, ``paging`` for a
history block (whether it is the block, and which token may be sent next). Only the GETs and
the ``startCallbacks`` PUT are retried: a POST or DELETE that timed out may have landed, and a
send retried could text the devices twice.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import requests
import structlog

from sync_worker import answers, errors, models, paging, transport

_log = structlog.get_logger(__name__)
T = TypeVar("T")


class Api(Protocol):
    """What the controllers need of ``client.ThingSpaceClient``."""

    @property
    def base_url(self) -> str: ...

    @property
    def observer(self) -> transport.Observer | None: ...

    @property
    def allow_insecure_loopback(self) -> bool: ...

    @property
    def max_attempts(self) -> int: ...

    def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        retryable: bool,
        deadline: float | None = None,
        cursor_sent: bool = False,
        json_body: Any = None,
    ) -> requests.Response: ...

    def call_and_read(
        self,
        operation: str,
        method: str,
        path: str,
        read: Callable[[requests.Response], T],
        *,
        retryable: bool,
        deadline: float | None = None,
        cursor_sent: bool = False,
        json_body: Any = None,
    ) -> tuple[T, int]: ...


class SmsController:
    """The SMS operations, named as in the vendor SDK's ``SmsController``."""

    def __init__(self, client: Api) -> None:
        self._client = client

    def send_sms_to_device(self, request: models.SMSSendRequest) -> models.DeviceManagementResult:
        """POST ``/m2m/v1/sms``. Never retried: a retry could text the devices twice."""
        request.validate()
        operation = "send_sms_to_device"
        response = self._client.call(
            operation, "POST", "/m2m/v1/sms", retryable=False, json_body=request.to_wire()
        )
        return answers.parse(response, operation, models.DeviceManagementResult.from_wire)

    def start_queued_sms_delivery(self, account_name: str) -> models.ConnectivityManagementSuccessResult:
        """PUT ``/m2m/v1/sms/{aname}/startCallbacks``."""
        _check_account(account_name)
        operation = "start_queued_sms_delivery"
        response = self._client.call(
            operation, "PUT", f"/m2m/v1/sms/{_quote(account_name)}/startCallbacks", retryable=True
        )
        return answers.parse(response, operation, models.ConnectivityManagementSuccessResult.from_wire)

    def list_devices_sms_messages(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> models.HistoryPage:
        """GET one history block. Sending ``next`` acknowledges the block it came with.

        What the answer is, and what may be sent next, is ``paging``'s decision; this sends the
        request (again, for an unreadable answer, under the retry policy) and hands it the bytes.
        """
        _check_account(account_name)
        path = f"/m2m/v1/sms/{_quote(account_name)}/history"
        if next is not None:
            paging.check_request_token(next)
            path += f"?next={next}"
        operation = paging.OPERATION
        base_url = self._client.base_url
        on_unknown = getattr(self._client.observer, "on_unknown_member", None)

        def read(response: requests.Response) -> models.HistoryPage:
            answer = paging.Answer(
                response.status_code,
                response.headers.get("Location"),
                response.content,
                transport.body_over_cap(response),
            )
            return paging.read(
                answer, account_name=account_name, request_next=next, base_url=base_url, on_unknown=on_unknown
            )

        try:
            page, _ = self._client.call_and_read(
                operation, "GET", path, read, retryable=True, deadline=deadline, cursor_sent=next is not None
            )
        except errors.UnreadableAnswerError as exc:
            final = paging.after_attempts(exc, max_attempts=self._client.max_attempts)
            if final is exc:
                raise
            _log.warning(
                "thingspace_history_unreadable_after_attempts",
                account=account_name,
                attempts=exc.attempts,
                problem=exc.block.problem,
            )
            raise final from exc
        return page

    def iter_history_blocks(
        self, account_name: str, next: str | None = None, *, deadline: float | None = None
    ) -> Iterator[models.HistoryPage]:
        """Yield blocks; block N+1 (whose request acknowledges block N) is fetched only when asked
        for, and only once block N's ticket is settled (``paging.Pager``, ``gate.release``)."""
        pager = paging.Pager(next)
        while not pager.done:
            page = self.list_devices_sms_messages(account_name, pager.next_token(), deadline=deadline)
            pager.took(page)
            yield page


class ConnectivityCallbacksController:
    """Callback listeners, named as in the vendor SDK's ``ConnectivityCallbacksController``.

    Like the SDK, only the GET is retried: a POST or DELETE that timed out may have landed.
    """

    def __init__(self, client: Api) -> None:
        self._client = client

    def list_registered_callbacks(self, account_name: str) -> list[models.CallbackListener]:
        """GET ``/m2m/v1/callbacks/{aname}``: every listener of the account (passwords as ``Secret``)."""
        _check_account(account_name)
        operation = "list_registered_callbacks"
        response = self._client.call(
            operation, "GET", f"/m2m/v1/callbacks/{_quote(account_name)}", retryable=True
        )
        return answers.parse(response, operation, _listeners)

    def register_callback(
        self, account_name: str, body: models.RegisterCallbackRequest
    ) -> models.CallbackActionResult:
        """POST ``/m2m/v1/callbacks/{aname}``: replaces whatever listener the service had."""
        _check_account(account_name)
        body.validate(allow_insecure_loopback=self._client.allow_insecure_loopback)
        operation = "register_callback"
        response = self._client.call(
            operation,
            "POST",
            f"/m2m/v1/callbacks/{_quote(account_name)}",
            retryable=False,
            json_body=body.to_wire(),
        )
        return answers.parse(response, operation, models.CallbackActionResult.from_wire)

    def deregister_callback(self, account_name: str, service_name: str) -> models.CallbackActionResult:
        """DELETE ``/m2m/v1/callbacks/{aname}/name/{service}``."""
        _check_account(account_name)
        operation = "deregister_callback"
        response = self._client.call(
            operation,
            "DELETE",
            f"/m2m/v1/callbacks/{_quote(account_name)}/name/{_quote(service_name)}",
            retryable=False,
        )
        return answers.parse(response, operation, models.CallbackActionResult.from_wire)


def _listeners(obj: Any) -> list[models.CallbackListener]:
    if not isinstance(obj, list):
        raise errors.ResponseFormatError("callback listing is not a JSON array")
    return [models.CallbackListener.from_wire(item) for item in obj]


def _quote(account_name: str) -> str:
    return urllib.parse.quote(account_name, safe="")


def _check_account(account_name: str) -> None:
    if not isinstance(account_name, str) or not models.ACCOUNT_NAME_RE.fullmatch(account_name):
        shown = str(account_name)
        preview = repr(shown if len(shown) <= 24 else shown[:24] + "...") + f" (length {len(shown)})"
        raise errors.ValidationError(f"account name {preview} must be 3-32 letters, digits or '-'")
