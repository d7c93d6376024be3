"""The operator-facing HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers "should this process be restarted?" (alive, scheduler
running, no run stuck far past its budget); ``/readyz`` answers "is it able
to do its job?" (database reachable, schema current, login guard not tripped).
Kubernetes restarts on the first and only stops routing / alerts on the
second, so a database outage must never make ``/healthz`` fail: restarting
would not bring the database back (a run stuck in a hung connection far past
its budget is another matter: only a restart frees its thread).

The probes are callables supplied by the caller so this module knows nothing
about the scheduler or the store; ``checks`` builds a readiness callable out
of named checks that raise ``errors.SyncWorkerError``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from sync_worker import errors, metrics, secret, serving

_log = logging.getLogger(__name__)
_JSON: Final = "application/json"
# A probe or a scrape sends its request at once and reads a small answer: a connection silent for
# this long (per read or write) is a stuck or hostile client, and it would hold a thread.
REQUEST_TIMEOUT_SECONDS: Final = 10.0
# Connections served at once: kubelet probes and a few scrapers need a handful.
MAX_CONNECTIONS: Final = 16
# Probe bodies go to orchestrators and humans; a long reason is a bug somewhere else.
_MAX_REASON: Final = 300

# True/False, or (alive, reason) when the reason is worth naming (the runs that are stuck).
LiveCheck = Callable[[], bool | tuple[bool, str]]
ReadyCheck = Callable[[], tuple[bool, str]]


def _reason(text: str) -> str:
    return secret.scrub(text)[:_MAX_REASON]


def checks(named: Sequence[tuple[str, Callable[[], None]]]) -> ReadyCheck:
    """A readiness callable running ``named`` checks in order.

    Each check returns normally when fine and raises when not; the first
    failure becomes the reason (``"database: ..."``). Errors outside the
    project hierarchy are reported by type only, since their text was not
    written with secrets in mind.
    """

    def ready() -> tuple[bool, str]:
        for name, check in named:
            try:
                check()
            except errors.SyncWorkerError as exc:
                return False, _reason(f"{name}: {exc}")
            except Exception as exc:
                return False, _reason(f"{name}: {type(exc).__name__}")
        return True, "ok"

    return ready


class _Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them.

    A connection beyond the cap makes room by closing the oldest connection that has not sent
    its request yet (an idle or slow client), so idle clients can never lock a probe out; when
    every connection is busy answering, the newcomer is closed at once instead.
    """

    daemon_threads = True
    # Restarting the daemon must not fail on a port in TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        metrics: metrics.Metrics,
        live: LiveCheck,
        ready: ReadyCheck,
        *,
        request_timeout: float,
        max_connections: int,
    ) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._connections_lock = threading.Lock()
        # Open connections, oldest first: True once its request was read (busy answering).
        self._connections: dict[socket.socket, bool] = {}

    def verify_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> bool:
        assert isinstance(request, socket.socket)  # noqa: S101  # a TCP server's request is its socket
        with self._connections_lock:
            if len(self._connections) >= self.max_connections:
                idle = next((c for c, busy in self._connections.items() if not busy), None)
                if idle is None:
                    return False  # socketserver closes it
                del self._connections[idle]
                # Wakes the thread blocked reading it: it reads end-of-file and ends.
                with contextlib.suppress(OSError):
                    idle.shutdown(socket.SHUT_RDWR)
            self._connections[request] = False
        return True

    def request_read(self, request: socket.socket) -> None:
        with self._connections_lock:
            if request in self._connections:
                self._connections[request] = True

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.pop(request, None)
        super().shutdown_request(request)

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints these to stderr, outside the JSON log: a client that went away
        # mid-answer, or a connection closed to make room, is not worth more than a debug line.
        _log.debug("health request failed", exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "thingspace-sms-sync"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # A read or write that waits longer raises TimeoutError: the request is given up (the
        # handler logs it) and the connection closed.
        self.connection.settimeout(self.server.request_timeout)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.request_read(self.connection)
        return parsed

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, metrics.CONTENT_TYPE, self.server.metrics.render())
        elif path == "/healthz":
            self._probe_live()
        elif path == "/readyz":
            self._probe_ready()
        else:
            self._json(404, {"status": "not_found"})

    def _probe_live(self) -> None:
        try:
            answer = self.server.live()
        except Exception as exc:
            self._json(503, {"status": "unavailable", "reason": _reason(type(exc).__name__)})
            return
        alive, reason = answer if isinstance(answer, tuple) else (bool(answer), "scheduler not running")
        if alive:
            self._json(200, {"status": "ok"})
        else:
            self._json(503, {"status": "unavailable", "reason": _reason(reason)})

    def _probe_ready(self) -> None:
        try:
            ok, reason = self.server.ready()
        except errors.SyncWorkerError as exc:
            ok, reason = False, str(exc)
        except Exception as exc:
            ok, reason = False, type(exc).__name__
        body = {"status": "ready" if ok else "unready", "reason": _reason(reason)}
        self._json(200 if ok else 503, body)

    def _json(self, status: int, body: dict[str, str]) -> None:
        self._send(status, _JSON, json.dumps(body).encode() + b"\n")

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # Probes arrive every few seconds; at INFO they would drown the sync's own events.
        _log.debug("health request: " + format, *args)


class HealthServer:
    """A threaded HTTP server for metrics and probes; ``port=0`` picks a free port."""

    def __init__(
        self,
        port: int,
        metrics: metrics.Metrics,
        *,
        live: LiveCheck,
        ready: ReadyCheck,
        # Probes and scrapes come from outside the container or host namespace.
        host: str = "0.0.0.0",  # noqa: S104
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._address = (host, port)
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._metrics = metrics
        self._live = live
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._address[1]
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def open_connections(self) -> int:
        """Connections the server holds now (each has its thread)."""
        return 0 if self._server is None else self._server.open_connections

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        try:
            server = _Server(
                self._address,
                self._metrics,
                self._live,
                self._ready,
                request_timeout=self._request_timeout,
                max_connections=self._max_connections,
            )
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot listen on {self._address[0]}:{self._address[1]} for metrics/health "
                f"(SYNC_METRICS_PORT): {exc.strerror or exc}"
            ) from exc
        self._server = server
        self._thread = serving.start(server, name="health-server", poll_interval=0.2)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        serving.stop(server, thread)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
