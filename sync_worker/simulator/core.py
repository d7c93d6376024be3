"""``Simulator``: the in-process ThingSpace, wiring auth, queues, faults and stats to the HTTP layer.

Faults (``Simulator.faults``, every one counted in ``stats.faults``) are decided before the request
is processed, so a faulted request acknowledges nothing. Two deliberate exceptions, both for
exact tests: the scripted ``"lost_response"`` outcome processes the request (the ack happens) and
then drops the connection, and a ``Raw`` entry without a body (a header/status tamper) processes the
request normally and rewrites its reply; neither dequeues a final block.

The ``_serve``, ``_process``, ``_token``, ``_login`` and ``_queue`` methods are hooks the crash
harness and the hostile-input tests override; keep their signatures.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

from sync_worker import serving
from sync_worker.simulator import (
    auth,
    counters,
    env,
    history,
    hooks,
    push,
    server,
    settings,
    sms,
    traffic,
    wire,
)
from sync_worker.simulator import faults as faultmod

_MAX_BODY: Final = 1 << 20


class Simulator:
    """An in-process ThingSpace. ``start()`` binds ``config.host:config.port`` (0 = any free port)."""

    def __init__(
        self, config: settings.SimConfig | None = None, faults: faultmod.Faults | None = None
    ) -> None:
        self.config = config or settings.SimConfig()
        self.faults = faults or faultmod.Faults()
        self.faults._expire = self._expire
        self.stats = counters.Stats(self.config.request_log_size, settle=self._settle)
        self.sent: list[Any] = []
        self.hooks = hooks.Hooks()
        self._lock = threading.Lock()
        # Requests between processing (or a fault reply) and the end of their after-write
        # step (a final block's dequeue) and their request-log entry. Observers wait for
        # zero so a client that already holds the response never sees the state before it.
        self._unsettled = 0
        self._settled = threading.Condition()
        self._queues: dict[str, history.AccountQueue] = {}
        for account in self.config.accounts:
            self._queue(account, create=True)
        self._auth = auth.AuthState(self.stats, self._issued)
        # Push mode: listeners and the delivery thread (module ``push``).
        self.push = push.Pusher(self.config, self._requeue_failed_push)
        self._stopping = threading.Event()
        self._server: server.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        # The config is read per request, so a changed log_requests takes effect at once.
        self._server = server.Server(
            (self.config.host, self.config.port),
            self._handle,
            lambda: self.config.log_requests,
        )
        self._thread = serving.start(self._server, name="thingspace-simulator", poll_interval=0.05)
        return self

    def stop(self) -> None:
        srv = self._server
        if srv is None:
            return
        # Wakes handlers held by latency or timeout faults.
        self._stopping.set()
        self.push.stop()
        serving.stop(srv, self._thread, after_shutdown=srv.cut_connections, join_timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api``, the value for ``ClientConfig.base_url``."""
        return f"http://{self.config.host}:{self.port}/api"

    def worker_env(
        self,
        *,
        accounts: Iterable[str] | str | None = None,
        database_url: str | None = None,
        inherit: bool = False,
        **extra: str,
    ) -> dict[str, str]:
        """The environment pointing a worker at this (started) simulator; see ``env.worker_env``."""
        return env.worker_env(
            self.base_url,
            self.config,
            accounts=accounts,
            database_url=database_url,
            inherit=inherit,
            **extra,
        )

    # -- traffic --

    def _queue(self, account: str, *, create: bool = False) -> history.AccountQueue:
        with self._lock:
            q = self._queues.get(account)
            if q is None:
                q = history.AccountQueue(account, self._final_block)
                if create:
                    self._queues[account] = q
            # An unknown account reads as an empty, detached queue.
            return q

    def add_account(self, account: str) -> None:
        self._queue(account, create=True)

    def accounts(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    def inject(self, account: str, messages: Iterable[Any]) -> None:
        """Queue wire messages as given (malformed ones too). Creates the account if needed.

        An account in push mode (``startCallbacks`` with a listener) gets them pushed instead.
        """
        queue = self._queue(account, create=True)
        if self.push.active(account):
            self.push.push(account, list(messages))
        else:
            queue.add(messages)

    def pushed(self, account: str) -> list[Any]:
        """Messages whose callback the listener answered 2xx, in order (a redelivery appears again)."""
        return self.push.delivered(account)

    def _requeue_failed_push(self, account: str, messages: list[Any]) -> None:
        # A push that failed for good goes back to the history queue, for polling to find.
        self._queue(account, create=True).add(messages)

    def seed(
        self,
        account: str,
        n: int,
        seed: int = 1,
        *,
        until: float | None = None,
        shape: traffic.Shape | None = None,
    ) -> list[dict[str, Any]]:
        """Queue ``n`` deterministic realistic messages and return them (``traffic.seed_messages``:
        ``until`` a Unix time makes them end just before it, with a busy device and malformed ones;
        ``shape`` makes them traffic of that shape instead)."""
        messages = traffic.seed_messages(n, seed, until=until, shape=shape)
        self.inject(account, messages)
        return messages

    def requeue(self, account: str, n: int) -> list[Any]:
        """Put the last ``n`` acknowledged messages back at the head of the queue (fewer if fewer
        were acknowledged) and return them: the platform delivering a block again, as after an
        acknowledgement it lost. ``acknowledged`` no longer lists them until they are dequeued again."""
        self._settle()
        return self._queue(account).requeue(n)

    def acknowledged(self, account: str) -> list[Any]:
        """The delivered set: messages dequeued so far, in order."""
        self._settle()
        q = self._queue(account)
        with q.lock:
            return list(q.acknowledged)

    def queued(self, account: str) -> list[Any]:
        self._settle()
        q = self._queue(account)
        with q.lock:
            return [item[2] for item in q.items]

    def issued_tokens(self, account: str) -> list[str]:
        """Every ``next`` token handed out for ``account``, in order."""
        q = self._queue(account)
        with q.lock:
            return list(q.issued)

    def token_acks(self, account: str) -> dict[str, int]:
        """How many times each token acknowledged its block (replays do not count)."""
        q = self._queue(account)
        with q.lock:
            return {token: q.ack_counts.get(token, 0) for token in q.issued}

    # -- auth state --

    def _expire(self, what: str) -> None:
        self._auth.expire(what)

    def expire_session(self) -> None:
        self.faults.expire_session()

    def expire_bearer(self) -> None:
        self.faults.expire_bearer()

    def failed_login_streak(self, username: str | None = None) -> int:
        """The vendor's count of consecutive failed logins of ``username`` (default: the configured user)."""
        return self._auth.failed_streak(username if username is not None else self.config.username)

    def peak_failed_login_streak(self, username: str | None = None) -> int:
        """The highest that count ever was: 5 (``max_failed_logins``) means the user got locked."""
        return self._auth.peak_failed_streak(username if username is not None else self.config.username)

    def unlock(self, username: str | None = None) -> None:
        """Reset the failed-login count (what vendor support does for a locked user)."""
        self._auth.unlock(username)

    # -- request handling --

    def _handle(self, h: server.Handler, method: str) -> None:
        # The request line and headers are in: the request's time at the server starts here.
        h.arrived = time.monotonic()
        split = urllib.parse.urlsplit(h.path)
        route = server.route(method, split.path)
        kind = route[0] if route else "unknown"
        status: int | None = None
        try:
            length = int(h.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                h.close_connection = True
                status = 413
                self._begin_reply(h)
                h.write_reply(
                    413, wire.m2m_error(wire.CODE_INVALID_REQUEST, "Request too large"), wire.JSON_HEADERS
                )
                return
            body = h.rfile.read(length) if length else b""
            if route is None:
                status = 404
                self._begin_reply(h)
                h.write_reply(404, wire.dumps({"error": "not_found", "path": split.path}), wire.JSON_HEADERS)
                return
            # The one route with a second path parameter passes it as the query.
            query = split.path.rsplit("/", 1)[-1] if kind == "deregister_callback" else split.query
            status = self._serve(h, kind, route[1], query, body)
        except server.Dropped:
            h.close_connection = True
        except (ConnectionError, OSError, ValueError):
            h.close_connection = True
        finally:
            self.stats.record(counters.RequestRecord(method, split.path, split.query, status, kind))
            self._end_reply(h)

    def _serve(self, h: server.Handler, kind: str, account: str | None, query: str, body: bytes) -> int:
        self.stats.bump(counters.COUNTER_FOR[kind])
        request = hooks.Request(kind, account, query, body)
        drop = self.hooks.drop
        if drop is not None and drop(request):
            self.stats.fault("dropped")
            raise server.Dropped
        status = self._answer(h, request)
        answered = self.hooks.answered
        if answered is not None:
            answered(request, status)
        return status

    def _answer(self, h: server.Handler, request: hooks.Request) -> int:  # noqa: PLR0912, PLR0915  # the request router
        kind, account, query, body = request.kind, request.account, request.query, request.body
        faults = self.faults
        # Latency is the time a request takes at the server, its own work included: the answer
        # leaves at arrival + latency, not after latency + the time it took to build it.
        ready_at = h.arrived + faults.latency
        if faults.latency > 0:
            self.stats.fault("latency")
        step = faults.decide(kind)
        tamper: faultmod.Raw | None = None
        unreadable: faultmod.Mangle | None = None
        trickle: faultmod.Trickle | None = None
        lose = False
        if step is not None and step != 200:
            if isinstance(step, faultmod.Trickle):
                self.stats.fault("trickle")
                trickle = step
            elif isinstance(step, faultmod.Mangle):
                self.stats.fault(f"unreadable_{step.kind}")
                unreadable = step
            elif isinstance(step, faultmod.Raw) and (step.body is None or step.process):
                self.stats.fault("tamper")
                tamper = step
            elif step == "lost_response":
                self.stats.fault("lost_response")
                lose = True
            elif step in ("expire_session", "expire_bearer"):
                # Expiry lands exactly on this request; it is then processed (and refused) as usual.
                self.stats.fault(step)
                self._expire("session" if step == "expire_session" else "bearer")
            else:
                self._hold(ready_at, drop_on_stop=True)
                return self._fault_reply(h, step)
        self._begin_reply(h)
        status, reply_body, headers, after_write = self._process(h, kind, account, query, body)
        rewrite = self.hooks.rewrite
        if rewrite is not None:
            replaced = rewrite(request, hooks.Answer(status, reply_body, tuple(headers)))
            if replaced is not None:
                status, reply_body, headers = replaced.status, replaced.body, list(replaced.headers)
                after_write = None
        # Processed already (a block may be acknowledged): a stop only cuts the wait short.
        self._hold(ready_at, drop_on_stop=False)
        if lose:
            raise server.Dropped
        if tamper is not None:
            drop = {name.lower() for name in tamper.drop_headers} | {n.lower() for n, _ in tamper.headers}
            headers = [(n, v) for n, v in headers if n.lower() not in drop] + list(tamper.headers)
            status = tamper.status if tamper.status is not None else status
            if tamper.body is not None:
                reply_body = tamper.body
            after_write = None
        if unreadable is not None and status in (200, 202):
            status, reply_body, headers = faultmod.mangle(unreadable.kind, status, reply_body, headers)
            after_write = None
        if trickle is not None:
            # An endless one is never delivered (write_reply ends only by raising): a final block
            # it stood for stays queued.
            h.close_connection = h.close_connection or trickle.endless
            h.write_reply(status, reply_body, headers, trickle=trickle, pause=self._trickle_pause(trickle))
        else:
            h.write_reply(status, reply_body, headers)
        if after_write is not None:
            after_write()
        return status

    def _trickle_pause(self, step: faultmod.Trickle) -> Callable[[], None]:
        def pause() -> None:
            # A stop cuts a trickle off like any connection the server drops.
            if self._stopping.wait(step.gap):
                raise server.Dropped

        return pause

    def _hold(self, until: float, *, drop_on_stop: bool) -> None:
        """Wait until ``until`` (monotonic); a stop ends the wait, and drops the request if asked."""
        remaining = until - time.monotonic()
        if remaining > 0 and self._stopping.wait(remaining) and drop_on_stop:
            raise server.Dropped

    def _begin_reply(self, h: server.Handler) -> None:
        if not h.replying:
            h.replying = True
            with self._settled:
                self._unsettled += 1

    def _end_reply(self, h: server.Handler) -> None:
        if h.replying:
            h.replying = False
            with self._settled:
                self._unsettled -= 1
                self._settled.notify_all()

    def _settle(self, timeout: float = 10.0) -> None:
        with self._settled:
            self._settled.wait_for(lambda: self._unsettled == 0, timeout=timeout)

    def _fault_reply(self, h: server.Handler, step: faultmod.ScriptStep) -> int:
        if isinstance(step, faultmod.Raw):
            self.stats.fault("raw")
            self._begin_reply(h)
            status = step.status if step.status is not None else 200
            h.write_reply(status, step.body or b"", step.headers)
            return status
        if step == "timeout":
            self.stats.fault("timeout")
            self._stopping.wait(self.faults.timeout_seconds)
            raise server.Dropped
        if not isinstance(step, int):
            raise ValueError(f"unknown script step {step!r}")
        self.stats.fault(str(step))
        self._begin_reply(h)
        if step == 429:
            headers: list[tuple[str, str]] = [("Content-Type", "text/plain")]
            if self.faults.retry_after is not None:
                headers.append(("Retry-After", self.faults.retry_after))
            h.write_reply(429, b"Too Many Requests", headers)
            return 429
        phrase = wire.REASONS.get(step, b"Error").decode()
        if step in (502, 503, 504):
            page = wire.HTML_ERROR.format(code=step, phrase=phrase).encode()
            h.write_reply(step, page, wire.HTML_HEADERS)
        else:
            h.write_reply(
                step, wire.m2m_error(wire.CODE_UNEXPECTED, f"{phrase} (simulated)"), wire.JSON_HEADERS
            )
        return step

    def _process(  # noqa: PLR0912  # the endpoint router
        self, h: server.Handler, kind: str, account: str | None, query: str, body: bytes
    ) -> wire.Reply:
        if kind == "token":
            return self._token(h, body)
        if kind == "revoke":
            return self._auth.revoke(self.config, h.headers.get("Authorization") or "", body)
        if not self._auth.bearer_ok(self.config, h.headers.get("Authorization")):
            return wire.json_reply(401, wire.BEARER_FAULT_BODY)
        if kind == "login":
            return self._login(body)
        if not self._auth.session_ok(self.config, h.headers.get("VZ-M2M-Token")):
            return wire.json_reply(400, wire.SESSION_EXPIRED_BODY)
        if kind == "logout":
            return self._auth.logout(h.headers.get("VZ-M2M-Token") or "")
        if kind == "send":
            return self._send(body)
        assert account is not None  # noqa: S101  # for mypy: every remaining route names an account
        with self._lock:
            q = self._queues.get(account)
        if q is None:
            return _account_not_found()
        if kind == "start_callbacks":
            self.push.start(account, q.take_all)
            return wire.json_reply(200, b'{"success":true}')
        if kind == "register_callback":
            return self.push.register(account, body)
        if kind == "list_callbacks":
            return self.push.listing(account)
        if kind == "deregister_callback":
            return self.push.deregister(account, urllib.parse.unquote(query))
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        next_token = params["next"][0] if "next" in params else None
        reply = q.get(next_token, self.config, self.stats)
        headers = list(wire.JSON_HEADERS)
        if reply.location is not None:
            headers.append(("Location", reply.location))
        return reply.status, reply.body, headers, reply.after_write

    def _token(self, h: server.Handler, body: bytes) -> wire.Reply:
        return self._auth.token(self.config, h.headers.get("Authorization") or "", body)

    def _login(self, body: bytes) -> wire.Reply:
        return self._auth.login(self.config, body)

    def _issued(self, kind: str, token: str) -> None:
        hook = self.hooks.issued
        if hook is not None:
            hook(kind, token)

    def _final_block(self, account: str, messages: list[Any]) -> None:
        hook = self.hooks.final_block
        if hook is not None:
            hook(account, messages)

    def _send(self, body: bytes) -> wire.Reply:
        req, problem = sms.parse_send(body)
        if req is None:
            return wire.json_reply(400, wire.m2m_error(wire.CODE_INVALID_REQUEST, problem))
        with self._lock:
            known = req["accountName"] in self._queues
            if known:
                self.sent.append(req)
        if not known:
            return _account_not_found()
        return wire.json_reply(200, wire.dumps({"requestId": str(uuid.uuid4())}))


def _account_not_found() -> wire.Reply:
    return wire.json_reply(400, wire.m2m_error(wire.CODE_ACCOUNT_NOT_FOUND, "Account not found."))
