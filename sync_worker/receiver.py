"""The callback receiver: ThingSpace's pushed SMS into ``sms_history``, in plain HTTP behind a TLS
terminator (ThingSpace refuses self-signed certificates; docs/operations.md, "Push mode").

``POST /callbacks/{account}`` is the only route. Checks, cheapest first, each refusal answered
without reading further, logged as ``callback_refused`` (reason, status, source, size; never the
body or a credential) and counted:

1. source address in ``allowed_sources`` (X-Forwarded-For believed only from ``trusted_proxies``): 403;
2. the account in the URL is one we serve: 403 (the same answer as bad credentials);
3. a ``Content-Length`` (411; or a chunked body) of at most ``max_body_bytes`` (413, the body is not
   read; a chunked one is refused once past it), the body whole within ``read_timeout`` (408);
4. a JSON media type: 415; a JSON object: 400;
5. the body's username/password are ours (``callbacks.ListenerCredentials``), and an
   ``accountName`` in the body, if any, is the URL's: 403.

An authenticated body is committed (messages with source 'push' and the redacted body) before
the 2xx is written. Callbacks that arrive together share one transaction (``group_commit``:
``callback_store.store_callbacks``), each answered only once that transaction committed; when a shared
transaction fails for a reason one callback could cause, each is written again on its own, so a
callback the database refuses fails alone. A database that cannot be reached, is busy (no
connection in time, a lock or statement timeout, the commit queue full) answers 503 with
Retry-After and any other store failure 500, so ThingSpace retries (and, after its last attempt,
puts the message back in the history queue for polling). A body of unknown shape is
kept and answered 200: refusing it would only make the platform send it again, then re-queue it.

The HTTP server is granian, embedded (``receiver_http``: it serves ``receiver_http.Endpoint``, which
asks this module for every check and answer); ``Receiver.wsgi`` is the same receiver as a plain WSGI
application, for in-process callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import http
import ipaddress
import threading
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

import psycopg
import psycopg.errors
import structlog

from sync_worker import (
    callback_metrics,
    callback_pool,
    callback_store,
    callbacks,
    db,
    errors,
    group_commit,
    models,
    receiver_http,
)

# The request and its answer are the HTTP side's (receiver_http serves them).
Answer = receiver_http.Answer
Incoming = receiver_http.Incoming
Pending = receiver_http.Pending
Step = receiver_http.Step

PATH_PREFIX: Final = "/callbacks/"
_JSON_TYPES: Final = ("application/json",)
_MAX_HEADER_BYTES: Final = 16 * 1024
_log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    accounts: frozenset[str]
    credentials: callbacks.ListenerCredentials = dataclasses.field(repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    max_body_bytes: int = 65536
    allowed_sources: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    # Headers not complete, or a body not complete, this long after it began: the connection is
    # closed (408 for a body). A client that stops mid-request holds no thread (bodies are awaited
    # on the event loop), only one of connection_limit's slots, and not for long.
    read_timeout: float = 30.0
    # Database connections at most, whatever the load.
    pool_size: int = 4
    # A callback that gets no connection within this answers 503 + Retry-After. With the lock and
    # statement timeouts, every answer comes well within the ~4 s after which the platform sends
    # the same callback again, concurrently.
    acquire_timeout: float = 1.0
    lock_timeout: float = 1.5
    statement_timeout: float = 2.5
    # Seconds the 503's Retry-After asks for (the platform was seen retrying after 1.2-1.7 s).
    retry_after: int = 2
    # Threads for the rare blocking step of a request (keeping the body of a callback whose store
    # failed); every other step runs on the server's event loop or the committers.
    threads: int = 2
    # Open connections at most (granian's backpressure); beyond it granian stops accepting until
    # some close. Well above the platform's concurrency, so a crowd of stalled clients does not
    # lock it out at once.
    connection_limit: int = 2000
    # How long stop() waits for the requests being handled to answer.
    drain_timeout: float = 10.0
    # Group commit: transactions written at the same time (each holds one of pool_size's
    # connections; the rest serve the rare callback written alone), callbacks one transaction
    # takes at most, callbacks waiting for a transaction at most (beyond: 503 at once), and how
    # long a callback may wait for its commit before it is answered 503 (under the ~4 s after
    # which the platform delivers again).
    committers: int = 2
    max_batch: int = group_commit.DEFAULT_MAX_BATCH
    max_queue: int = 256
    commit_timeout: float = 3.5


class Receiver:
    """The callback endpoint, served by granian on a thread of its own; ``port=0`` picks a free port.

    ``wsgi`` is the same endpoint as a plain WSGI application (tests call it in-process); the
    server runs ``receiver_http.Endpoint``, its asynchronous twin, which shares every check below.
    """

    def __init__(
        self,
        config: ReceiverConfig,
        connect: db.ConnectionFactory,
        metrics: callback_metrics.CallbackMetrics,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._pool = callback_pool.CallbackPool(
            connect,
            size=config.pool_size,
            acquire_timeout=config.acquire_timeout,
            lock_timeout=config.lock_timeout,
            statement_timeout=config.statement_timeout,
        )
        self._committer: group_commit.GroupCommitter[Pending, callback_store.CallbackResult] = (
            group_commit.GroupCommitter(
                self._write,
                isolate=_one_could_cause,
                max_queue=config.max_queue,
                wait_timeout=config.commit_timeout,
                max_batch=config.max_batch,
                threads=config.committers,
                observe=self._observe,
                name="callback-commit",
            )
        )
        metrics.commit_queue.set_function(self._committer.queued)
        self._clock = clock
        self._server: receiver_http.Server | None = None
        self._idle = threading.Condition()
        self._in_flight = 0
        for account in sorted(config.accounts):
            metrics.account_served(account)

    @property
    def committer(self) -> group_commit.GroupCommitter[Pending, callback_store.CallbackResult]:
        return self._committer

    # -- lifecycle --

    def start(self) -> Receiver:
        if self._server is not None:
            return self
        cfg = self.config
        server = receiver_http.Server(
            receiver_http.Endpoint(self),
            host=cfg.host,
            port=cfg.port,
            connection_limit=cfg.connection_limit,
            read_timeout=cfg.read_timeout,
            max_header_bytes=_MAX_HEADER_BYTES,
            threads=cfg.threads,
        )
        self._pool.open()
        self._committer.start()
        try:
            server.start()
        except OSError as exc:
            self._committer.stop()
            self._pool.close()
            raise errors.ConfigError(
                f"cannot listen on {cfg.host}:{cfg.port} for callbacks (SYNC_CALLBACK_PORT): "
                f"{exc.strerror or exc}"
            ) from exc
        self._server = server
        _log.info("callback_receiver_started", host=cfg.host, port=self.port)
        return self

    def stop(self) -> None:
        """Stop accepting, let the requests being handled answer, then close every connection."""
        server = self._server
        if server is None:
            return
        server.stop(drain=self._drain)
        self._server = None
        self._committer.stop()
        self._pool.close()

    def _drain(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=self.config.drain_timeout)

    def live(self) -> bool:
        return self._server is not None and self._server.live()

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return self._server.port

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def limits(self) -> receiver_http.Limits:
        cfg = self.config
        return receiver_http.Limits(cfg.read_timeout, cfg.max_body_bytes)

    def entered(self) -> None:
        """A request is being handled (``stop`` waits for it)."""
        with self._idle:
            self._in_flight += 1

    def left(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    # -- the WSGI application --

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The receiver as a plain WSGI application, every step on the calling thread."""
        self.entered()
        try:
            answer = self.handle(_incoming(environ))
        finally:
            self.left()
        payload, headers = answer.http()
        start_response(f"{answer.status} {http.HTTPStatus(answer.status).phrase}", headers)
        return [payload]

    # -- one request --

    def handle(self, request: Incoming) -> Answer:
        """Check, read and store one request; every outcome is an ``Answer``, a failure of this
        code too (a deliberate 500, never a dropped connection)."""
        self.metrics.received.inc()
        try:
            first = self.admit(request)
            if isinstance(first, Answer):
                return first
            source, account = first
            body = request.read(request.length or 0)
            if len(body) != request.length:
                return self.refused(
                    errors.CallbackRefusedError(400, "body_cut_short"), request, source, account
                )
            step = self.accept(request, body, source, account)
            if isinstance(step, Answer):
                return step
            try:
                result = self._committer.commit(step.pending)
            except Exception as exc:
                answer, unread = self.failed(step, exc)
                if unread:
                    self.keep_unread(step.pending.kept, unread)
                return answer
            return self.stored(step, result)
        except Exception as exc:
            return self.crashed(exc)

    def unavailable(self) -> Answer:
        """The server is stopping: try again (another replica, or this one once restarted)."""
        return Answer(503, {"status": "unavailable"}, retry_after=self.config.retry_after)

    def crashed(self, exc: BaseException) -> Answer:
        self.metrics.store_failures.labels("unexpected").inc()
        _log.error("callback_receiver_failed", kind=type(exc).__name__, where=_where(exc))
        return Answer(500, {"status": "error"})

    def admit(self, request: Incoming) -> tuple[str | None, str] | Answer:
        """The checks made before the body is read: (source, account), or the refusal."""
        source = _text(_address(request.peer))
        account: str | None = None
        try:
            source = self._source(request)
            account = self._check_route(request, source)
            self._check_head(request)
        except errors.CallbackRefusedError as exc:
            return self.refused(exc, request, source, account)
        return source, account

    def accept(
        self,
        request: Incoming,
        body: bytes,
        source: str | None,
        account: str,
        *,
        future: asyncio.Future[None] | None = None,
    ) -> Step | Answer:
        """The whole body read: authenticated and ready to store, or the refusal."""
        try:
            obj = callbacks.decode(body)
            received_at = self._clock()
            callback = callbacks.read(obj, account, self.config.credentials, received_at=received_at)
        except errors.CallbackRefusedError as exc:
            return self.refused(exc, request, source, account)
        kept_body, exact = callbacks.redact(body, obj)
        kept = models.KeptCallback(
            account_name=callback.account_name,
            shape=callback.shape,
            problem=callback.report(),
            request_id=callback.request_id,
            callback_count=callback.callback_count,
            body=kept_body,
            body_exact=exact,
            source_address=source,
            received_at=received_at,
        )
        return Step(callback, Pending(kept, callback.messages, future))

    def refused(
        self, exc: errors.CallbackRefusedError, request: Incoming, source: str | None, account: str | None
    ) -> Answer:
        self.metrics.refused.labels(exc.reason).inc()
        _log.warning(
            "callback_refused",
            reason=exc.reason,
            status=exc.status,
            source=source,
            # Only a served account is named: a made-up one is the caller's text.
            account=account,
            body_size=request.length,
        )
        return Answer(exc.status, {"status": "refused"})

    def failed(self, step: Step, exc: BaseException) -> tuple[Answer, str | None]:
        """The answer to a callback whose store failed, and why its body is to be kept unread (or None)."""
        account = step.callback.account_name
        if isinstance(exc, callback_pool.Busy | group_commit.Saturated | errors.DatabaseUnavailableError):
            kind = "database_unavailable" if isinstance(exc, errors.DatabaseUnavailableError) else exc.kind
            self.metrics.store_failures.labels(kind).inc()
            _log.error("callback_store_failed", account=account, kind=kind, error=str(exc))
            return Answer(503, {"status": "unavailable"}, retry_after=self.config.retry_after), None
        # Whatever else went wrong (a database error, a bug): the body is kept, unread, so
        # nothing authenticated is lost, and the 500 makes the platform retry (then re-queue
        # the message for polling).
        kind = "store_error" if isinstance(exc, errors.StoreError) else "unexpected"
        self.metrics.store_failures.labels(kind).inc()
        error = str(exc) if kind == "store_error" else type(exc).__name__
        _log.error("callback_store_failed", account=account, kind=kind, error=error, where=_where(exc))
        return Answer(
            500, {"status": "error"}
        ), f"the receiver could not store it ({kind}: {type(exc).__name__})"

    def stored(self, step: Step, result: callback_store.CallbackResult) -> Answer:
        callback = step.callback
        account = callback.account_name
        self.metrics.stored.labels(account, callback.shape).inc()
        self.metrics.messages_inserted.labels(account).inc(result.inserted)
        self.metrics.messages_replayed.labels(account).inc(result.messages - result.inserted)
        fields = {
            "account": account,
            "shape": callback.shape,
            "callback_id": result.callback_id,
            "messages": result.messages,
            "inserted": result.inserted,
            "first_seen": result.first_seen,
            "request_id": callback.request_id,
            "callback_count": callback.callback_count,
        }
        if callback.shape == "unknown":
            self.metrics.kept.labels(account).inc()
            _log.warning("callback_kept_unknown_shape", problem=callback.problem, **fields)
            return Answer(200, {"status": "kept", "callbackId": result.callback_id})
        # Debug: at hundreds of callbacks a second a line each was a fifth of the receiver's CPU;
        # sms_callback keeps every callback, and the metrics count them.
        _log.debug("callback_stored", **fields)
        return Answer(200, {"status": "stored", "messages": result.messages, "inserted": result.inserted})

    def keep_unread(self, kept: models.KeptCallback, why: str) -> None:
        """Keep the body as an unknown shape (no messages) after storing it failed; log either way.
        Blocks (a transaction of its own)."""
        problem = "; ".join(p for p in (why + "; answered 500", kept.problem) if p)
        unread = dataclasses.replace(kept, shape="unknown", problem=problem)
        try:
            result = self._write([Pending(unread, ())])[0]
        except Exception as exc:
            _log.error(
                "callback_not_kept",
                account=kept.account_name,
                kind=type(exc).__name__,
                where=_where(exc),
                body_size=kept.body_size,
                body_sha256=kept.body_sha256,
            )
            return
        _log.warning("callback_kept_unread", account=kept.account_name, callback_id=result.callback_id)

    def _write(self, items: Sequence[Pending]) -> list[callback_store.CallbackResult]:
        """The committer's transaction: every item, committed together (or an exception)."""
        with self._pool.connection() as conn:
            try:
                return callback_store.store_callbacks(conn, [(p.kept, p.messages) for p in items])
            except errors.DatabaseUnavailableError as exc:
                if isinstance(exc.__cause__, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
                    raise callback_pool.Busy("busy", str(exc)) from exc
                raise

    def _observe(self, batch: group_commit.Batch) -> None:
        outcome = "committed" if batch.committed else ("split" if batch.isolated else "failed")
        self.metrics.commit_transactions.labels(outcome).inc()
        if batch.committed:
            self.metrics.commit_batch_size.observe(batch.size)

    def _check_route(self, request: Incoming, source: str | None) -> str:
        if not self._source_allowed(source):
            raise errors.CallbackRefusedError(403, "source_not_allowed")
        path = urllib.parse.urlsplit(request.path).path
        if request.method != "POST" or not path.startswith(PATH_PREFIX):
            raise errors.CallbackRefusedError(404 if request.method == "POST" else 405, "no_such_route")
        account = urllib.parse.unquote(path[len(PATH_PREFIX) :].rstrip("/"))
        if account not in self.config.accounts:
            raise errors.CallbackRefusedError(403, "account_not_served")
        return account

    def _check_head(self, request: Incoming) -> None:
        if request.length is None and not request.chunked:
            raise errors.CallbackRefusedError(411, "length_required")
        if request.length is not None and request.length > self.config.max_body_bytes:
            raise errors.CallbackRefusedError(413, "body_too_large")
        media = (request.content_type or "").split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise errors.CallbackRefusedError(415, "not_json_media_type")

    def _source(self, request: Incoming) -> str | None:
        """The caller's address: the peer, or from a trusted proxy its ``X-Forwarded-For``.

        ``forwarded_for`` is every header line joined in order (what RFC 9110 makes of repeated
        lines): reading only the first line let a caller put an allowed address first and have the
        proxy's own line ignored. Walked from the right, the first hop no trusted proxy vouches for
        is the client; a hop on that walk that is not a plain address is refused (400), never
        guessed around.
        """
        peer = _address(request.peer)
        if peer is None or request.forwarded_for is None or not _in(peer, self.config.trusted_proxies):
            return _text(peer)
        for hop in reversed(request.forwarded_for.split(",")):
            address = _address(hop.strip())
            if address is None:
                raise errors.CallbackRefusedError(
                    400, "forwarded_for_unreadable", "X-Forwarded-For holds something else than addresses"
                )
            if not _in(address, self.config.trusted_proxies):
                return str(address)
        return str(peer)

    def _source_allowed(self, source: str | None) -> bool:
        if not self.config.allowed_sources:
            return True
        address = _address(source)
        return address is not None and _in(address, self.config.allowed_sources)


def _one_could_cause(exc: BaseException) -> bool:
    """Whether one callback of a failed shared transaction could be why it failed, so that each is
    worth writing again on its own: not when the database is out of reach or busy (every one would
    fail the same way, each after its own wait), but a value it refused, a bug on one callback's
    path, or a deadlock with another transaction writing the same messages in another order."""
    if isinstance(exc, errors.DatabaseUnavailableError):
        return isinstance(exc.__cause__, psycopg.errors.DeadlockDetected)
    return not isinstance(exc, callback_pool.Busy)


def _where(exc: BaseException) -> str | None:
    """Where ``exc`` was raised (file:line in function): the exception's text may quote the body."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str | None:
    return None if address is None else str(address)


# Every request reads its peer (twice) and the hops of its X-Forwarded-For: parsing the same few
# strings again cost about a tenth of the handler.
@functools.lru_cache(maxsize=1024)
def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _incoming(environ: dict[str, Any]) -> Incoming:
    length = receiver_http.content_length(environ.get("CONTENT_LENGTH"))
    stream = environ["wsgi.input"]
    # WSGI hands the path as latin-1 decoded bytes; account names are ASCII either way.
    path = str(environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8", "replace")
    return Incoming(
        method=str(environ.get("REQUEST_METHOD") or "GET"),
        path=path,
        peer=environ.get("REMOTE_ADDR"),
        length=length,
        content_type=environ.get("CONTENT_TYPE"),
        forwarded_for=environ.get("HTTP_X_FORWARDED_FOR") or None,
        read=stream.read,
    )
