"""The receiver's HTTP server: granian (Rust, hyper) embedded in the receiver's process, on a
thread of its own running an asyncio loop, serving ``Endpoint``, the receiver as an RSGI
application (docs/operations.md, "The HTTP server": why granian, why RSGI, why embedded).

HTTP parsing, connections and sockets are granian's, off the GIL. The endpoint runs on the loop:
the checks that need only the head first, then the body awaited (a client that stalls holds a
coroutine, no thread, and is answered 408 after ``read_timeout``), then the parse and the
credentials, then the callback is handed to the group commit without blocking: the committer
wakes the loop once per transaction and every callback of it is answered, each only after that
transaction committed. The committers, the database pool and the metrics are the receiver's, in
the same process as the server; the one blocking step (keeping a body whose store failed) runs on a
small thread pool.

Bounds: ``connection_limit`` open connections at most (granian's backpressure: beyond it, it
stops accepting), headers within ``read_timeout`` (granian's ``header_read_timeout``) and
``max_header_bytes``, a body within ``read_timeout`` and ``max_body_bytes`` (declared before it is
read; a chunked one is counted as it comes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

import granian._granian
import granian.constants
import granian.http
import granian.log
import granian.rsgi
import granian.server.embed
import structlog

from sync_worker import callback_metrics, callback_store, callbacks, errors, group_commit, models

_log = structlog.get_logger(__name__)

# granian's own log lines (a Rust-side failure) go to the process's logging, errors only: its
# warning that the embedded server is "experimental" is said on every start.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"handlers": [], "level": "ERROR", "propagate": True},
        "granian.access": {"handlers": [], "level": "ERROR", "propagate": False},
    }
}


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None

    def http(self) -> tuple[bytes, list[tuple[str, str]]]:
        """The payload and headers to send."""
        payload = json.dumps(self.body).encode() + b"\n"
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return payload, headers


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """A callback waiting for its transaction."""

    kept: models.KeptCallback
    messages: tuple[models.SMSMessage, ...]
    # Resolved on the server's event loop once settled (requests served by granian); None for a
    # caller that blocks (``commit``).
    future: asyncio.Future[None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """An authenticated callback, ready to be committed."""

    callback: callbacks.Callback
    pending: Pending


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """A request's head, as each server hands it; ``read`` only where the body is read blocking."""

    method: str
    path: str
    peer: str | None
    length: int | None
    content_type: str | None
    # Every X-Forwarded-For line joined with ", " in order (RFC 9110's reading of repeated lines).
    forwarded_for: str | None
    read: Callable[[int], bytes] = lambda size: b""
    # No Content-Length, a chunked body: read up to max_body_bytes, refused beyond.
    chunked: bool = False


class Handling(Protocol):
    """What ``Endpoint`` asks of the receiver (``receiver.Receiver``): the checks and answers it
    shares with ``Receiver.wsgi``, the group commit, and the count of requests being handled."""

    @property
    def metrics(self) -> callback_metrics.CallbackMetrics: ...
    @property
    def committer(self) -> group_commit.GroupCommitter[Pending, callback_store.CallbackResult]: ...
    def limits(self) -> Limits: ...
    def entered(self) -> None: ...
    def left(self) -> None: ...
    def admit(self, request: Incoming) -> tuple[str | None, str] | Answer: ...
    def accept(
        self,
        request: Incoming,
        body: bytes,
        source: str | None,
        account: str,
        *,
        future: asyncio.Future[None] | None = None,
    ) -> Step | Answer: ...
    def refused(
        self, exc: errors.CallbackRefusedError, request: Incoming, source: str | None, account: str | None
    ) -> Answer: ...
    def failed(self, step: Step, exc: BaseException) -> tuple[Answer, str | None]: ...
    def stored(self, step: Step, result: callback_store.CallbackResult) -> Answer: ...
    def crashed(self, exc: BaseException) -> Answer: ...
    def unavailable(self) -> Answer: ...
    def keep_unread(self, kept: models.KeptCallback, why: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    read_timeout: float
    max_body_bytes: int


class _EmbeddedServer(granian.server.embed.Server):
    """granian's embedded server on a socket bound here (``listen``), not by granian: on Linux granian
    binds in each worker with SO_REUSEPORT, so a second receiver on the same port would share it
    silently instead of failing, and with port 0 nothing would tell which port is served."""

    def listen(self) -> None:
        """Bind and listen on the caller's thread; ``OSError`` when the address cannot be had."""
        family = socket.AF_INET6 if ":" in self.bind_addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind_addr, self.bind_port))
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        # The holder owns the descriptor from here on (granian's workers serve it).
        holder = granian._granian.SocketHolder(sock.detach(), False, self.backlog)  # type: ignore[call-arg]
        self._shd = holder  # type: ignore[assignment]  # granian's attributes are untyped
        self._sfd = holder.get_fd()
        self._ssp = None

    def _init_shared_socket(self) -> None:
        # Done by listen() before serve() (which calls this).
        pass

    def bound_port(self) -> int:
        return self._port


class Server:
    """``app`` (RSGI) served by granian on its own thread and asyncio loop."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        host: str,
        port: int,
        connection_limit: int,
        read_timeout: float,
        max_header_bytes: int,
        threads: int,
    ) -> None:
        self._endpoint = endpoint
        self._granian = _EmbeddedServer(
            endpoint,
            address=host,
            port=port,
            interface=granian.constants.Interfaces.RSGI,
            http=granian.constants.HTTPModes.http1,
            websockets=False,
            backlog=1024,
            backpressure=connection_limit,
            http1_settings=granian.http.HTTP1Settings(
                header_read_timeout=int(read_timeout * 1000),
                keep_alive=True,
                # hyper's read buffer: the head must fit (its floor is 8 KiB).
                max_buffer_size=max(8192, max_header_bytes),
            ),
            log_level=granian.log.LogLevels.error,
            log_dictconfig=_GRANIAN_LOGGING,
        )
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._blocking = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="callback-keep")
        endpoint.attach(self._loop, self._blocking)

    def start(self) -> None:
        """Listen (raises ``OSError`` when the address cannot be bound), then serve."""
        try:
            self._granian.listen()
        except OSError:
            self._loop.close()
            self._blocking.shutdown(wait=False)
            raise
        self._thread = threading.Thread(target=self._run, name="callback-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._granian.serve())
        except Exception as exc:
            _log.error("callback_server_failed", kind=type(exc).__name__, error=str(exc))
        finally:
            self._loop.close()

    @property
    def port(self) -> int:
        return self._granian.bound_port()

    def live(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._endpoint.stopping

    def stop(self, *, drain: Callable[[], None], join_timeout: float = 5.0) -> None:
        """Stop accepting, answer the requests still sending their body 503, let those being handled
        answer (``drain``), then end the loop (granian waits for its connections to finish)."""
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(RuntimeError):  # a loop that has ended already
            self._loop.call_soon_threadsafe(self._endpoint.stop)
            self._loop.call_soon_threadsafe(self._granian.stop)
        drain()
        thread.join(timeout=join_timeout)
        self._blocking.shutdown(wait=False, cancel_futures=True)
        self._thread = None


class Endpoint:
    """The receiver as an RSGI application: the same checks and answers as ``Receiver.wsgi``."""

    def __init__(self, the_receiver: Handling) -> None:
        self._receiver = the_receiver
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blocking: concurrent.futures.Executor | None = None
        # Requests still sending their body: answered 503 when the server stops.
        self._reading: set[asyncio.Future[bytes]] = set()
        self.stopping = False

    def attach(self, loop: asyncio.AbstractEventLoop, blocking: concurrent.futures.Executor) -> None:
        self._loop, self._blocking = loop, blocking

    def stop(self) -> None:
        """On the loop: no more bodies awaited."""
        self.stopping = True
        for reading in list(self._reading):
            reading.cancel()

    async def __rsgi__(self, scope: granian.rsgi.Scope, proto: granian._granian.RSGIHTTPProtocol) -> None:
        r = self._receiver
        r.entered()
        try:
            answer = await self._handle(scope, proto)
        finally:
            r.left()
        payload, headers = answer.http()
        proto.response_bytes(answer.status, headers, payload)

    async def _handle(self, scope: granian.rsgi.Scope, proto: granian._granian.RSGIHTTPProtocol) -> Answer:
        r = self._receiver
        r.metrics.received.inc()
        try:
            request = _incoming(scope)
            first = r.admit(request)
            if isinstance(first, Answer):
                return first
            source, account = first
            try:
                body = await self._body(proto, request)
            except errors.CallbackRefusedError as exc:
                return r.refused(exc, request, source, account)
            except asyncio.CancelledError:
                return r.unavailable()
            step = r.accept(request, body, source, account, future=self._loop_future())
            if isinstance(step, Answer):
                return step
            try:
                result = await self._commit(step)
            except Exception as exc:
                answer, unread = r.failed(step, exc)
                if unread is not None:
                    await self._run_blocking(r.keep_unread, step.pending.kept, unread)
                return answer
            return r.stored(step, result)
        except Exception as exc:
            return r.crashed(exc)

    async def _body(self, proto: granian._granian.RSGIHTTPProtocol, request: Incoming) -> bytes:
        """The whole body within ``read_timeout``; refused when cut short or over the limit."""
        config = self._receiver.limits()
        if self.stopping:
            raise asyncio.CancelledError
        reading = asyncio.ensure_future(_read(proto, request.length, config.max_body_bytes))
        self._reading.add(reading)
        try:
            return await asyncio.wait_for(reading, config.read_timeout)
        except TimeoutError:
            raise errors.CallbackRefusedError(408, "body_timeout") from None
        except granian._granian.RSGIProtocolClosed:
            raise errors.CallbackRefusedError(400, "body_cut_short") from None
        finally:
            self._reading.discard(reading)

    def _loop_future(self) -> asyncio.Future[None]:
        assert self._loop is not None  # noqa: S101  # attached before the server starts
        return self._loop.create_future()

    async def _commit(self, step: Step) -> callback_store.CallbackResult:
        """Hand the callback to the group commit and wait, without blocking the loop, until its
        transaction is settled (or the committer's ``wait_timeout``)."""
        r = self._receiver
        future = step.pending.future
        assert future is not None and self._loop is not None  # noqa: S101  # made by _handle
        ticket = r.committer.submit(step.pending, self._wake)
        timer = self._loop.call_later(r.committer.wait_timeout, _expire, future)
        try:
            await future
        except TimeoutError:
            r.committer.give_up(ticket)
        finally:
            timer.cancel()
        return ticket.outcome()

    def _wake(self, tickets: list[group_commit.Ticket[Pending, callback_store.CallbackResult]]) -> None:
        """From a committer thread: one hand-off to the loop for a whole transaction's callbacks."""
        assert self._loop is not None  # noqa: S101  # attached before the server starts
        with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits any more
            self._loop.call_soon_threadsafe(_settle, tickets)

    async def _run_blocking(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None  # noqa: S101  # attached before the server starts
        await self._loop.run_in_executor(self._blocking, fn, *args)


_Ticket = group_commit.Ticket[Pending, callback_store.CallbackResult]


def _settle(tickets: list[_Ticket]) -> None:
    for ticket in tickets:
        future = ticket.item.future
        if future is not None and not future.done():
            future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _read(proto: granian._granian.RSGIHTTPProtocol, length: int | None, limit: int) -> bytes:
    if length is not None:
        # hyper reads no more than the declared length, and that was checked against the limit.
        body: bytes = await proto()
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise errors.CallbackRefusedError(413, "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _incoming(scope: granian.rsgi.Scope) -> Incoming:
    headers = scope.headers
    length = content_length(headers.get("content-length"))
    # Every line (get would give the first only; its stub misses get_all).
    forwarded = cast(Any, headers).get_all("x-forwarded-for")
    return Incoming(
        method=scope.method,
        path=scope.path,
        peer=_host(scope.client),
        length=length,
        content_type=headers.get("content-type"),
        forwarded_for=", ".join(forwarded) if forwarded else None,
        chunked=length is None and "chunked" in (headers.get("transfer-encoding") or "").lower(),
    )


def content_length(raw: str | None) -> int | None:
    """A declared body length, or None when absent or not a non-negative integer."""
    try:
        length = int(raw) if raw else None
    except ValueError:
        return None
    return None if length is None or length < 0 else length


def _host(client: str) -> str:
    """``192.0.2.7:5000`` or ``[2001:db8::7]:5000`` without its port."""
    host = client.rsplit(":", 1)[0] if client.count(":") == 1 or client.startswith("[") else client
    return host.strip("[]")
