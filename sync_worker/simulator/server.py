"""The HTTP layer: a threading server that remembers its open connections, the request handler,
and the routing table from path to request kind."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Final

from sync_worker.simulator import faults, wire

_log = logging.getLogger("sync_worker.simulator")
_M2M: Final = "/api/m2m/v1"
# What a trickled answer's Content-Length promises beyond its body: it never ends.
_TRICKLE_EXTRA: Final = 10**9

Dispatch = Callable[["Handler", str], None]


class Dropped(Exception):
    """The handler must close the connection without answering."""


class Server(http.server.ThreadingHTTPServer):
    """Hands every request to ``dispatch(handler, method)``."""

    daemon_threads = True
    # socketserver's default backlog is 5: a worker opening its pool's connections at once
    # (SYNC_CONCURRENCY of them) overflowed it, and each dropped SYN cost that connection a
    # 1 s retransmit (TcpExtListenOverflows). The kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(
        self, address: tuple[str, int], dispatch: Dispatch, log_requests: Callable[[], bool]
    ) -> None:
        self.dispatch = dispatch
        self.log_requests = log_requests
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def cut_connections(self) -> None:
        """Shut down every open client socket, so no handler waits on a silent client."""
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the crash harness does it on purpose) is not a
        # simulator fault; anything else still gets the default traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Replies go out at once (TCP_NODELAY): with a client across a real network, Nagle could hold
    # a reply's last segment until the previous one is acknowledged (up to a delayed-ACK timer).
    disable_nagle_algorithm = True
    server: Server
    # True from the first byte of a reply until its request is in the log (see Simulator._settle).
    replying = False
    # time.monotonic() when the current request's head was read: the latency fault counts from it.
    arrived = 0.0

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests():
            _log.info("simulator %s", format % args)

    def do_GET(self) -> None:
        self.server.dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.dispatch(self, "POST")

    def do_PUT(self) -> None:
        self.server.dispatch(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.dispatch(self, "DELETE")

    def write_reply(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        *,
        trickle: faults.Trickle | None = None,
        pause: Callable[[], None] | None = None,
    ) -> None:
        """Write the reply at once, or with a ``trickle`` ``trickle.chunk`` bytes at a time with
        ``pause()`` before each piece (every read is quick, the whole is slow): the body, or the head
        too with ``trickle.head``. An ``endless`` one promises a gigabyte more than its body and
        writes spaces after it until ``pause()`` raises or the client goes away (``OSError``)."""
        endless = trickle is not None and trickle.endless
        head = self._head(status, len(body) + (_TRICKLE_EXTRA if endless else 0), headers)
        if trickle is None or pause is None:
            self.wfile.write(head + body)
            return
        if not trickle.head:
            self.wfile.write(head)
            self.wfile.flush()
            head = b""
        data = head + body
        step = max(1, trickle.chunk)
        for start in range(0, len(data), step):
            pause()
            self.wfile.write(data[start : start + step])
            self.wfile.flush()
        padding = b" " * step
        while endless:
            pause()
            self.wfile.write(padding)
            self.wfile.flush()

    def _head(self, status: int, length: int, headers: Iterable[tuple[str, str]]) -> bytes:
        head = [b"HTTP/1.1 %d %s\r\n" % (status, wire.REASONS.get(status, b"Unknown"))]
        dated = False
        for name, value in headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
            dated = dated or name.lower() == "date"
        if not dated:
            # Like any origin server with a clock (RFC 9110, 6.6.1); a harness may send its own.
            head.append(f"Date: {wire.http_date(0)}\r\n".encode("latin-1"))
        head.append(b"Content-Length: %d\r\n" % length)
        if self.close_connection:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        return b"".join(head)


def route(method: str, path: str) -> tuple[str, str | None] | None:
    """(kind, account) for a known endpoint; None otherwise."""
    if path == "/api/ts/v1/oauth2/token":
        return ("token", None) if method == "POST" else None
    if path == "/api/ts/v1/oauth2/revoke":
        return ("revoke", None) if method == "POST" else None
    if not path.startswith(_M2M + "/"):
        return None
    rest = path[len(_M2M) :]
    if method == "POST" and not rest.startswith("/callbacks/"):
        return {
            "/session/login": ("login", None),
            "/session/logout": ("logout", None),
            "/sms": ("send", None),
        }.get(rest)
    parts = rest.split("/")
    if len(parts) >= 3 and parts[1] == "callbacks" and parts[2]:
        account = urllib.parse.unquote(parts[2])
        if len(parts) == 3 and method in ("GET", "POST"):
            return ("list_callbacks" if method == "GET" else "register_callback"), account
        if len(parts) == 5 and parts[3] == "name" and parts[4] and method == "DELETE":
            return "deregister_callback", account
        return None
    if len(parts) == 4 and parts[1] == "sms" and parts[2]:
        account = urllib.parse.unquote(parts[2])
        if method == "GET" and parts[3] == "history":
            return "history", account
        if method == "PUT" and parts[3] == "startCallbacks":
            return "start_callbacks", account
    return None
