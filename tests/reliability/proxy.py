"""A TCP proxy in front of Postgres that a test can cut and restore: a database outage on demand.

The worker connects to 127.0.0.1:<proxy port>; the proxy forwards to the real server (a TCP
host/port or the embedded server's unix socket). ``cut()`` drops every open connection and
refuses new ones (accepted, then closed at once, like a server that is going down) until
``restore()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class PgProxy:
    def __init__(self, upstream_conninfo: str) -> None:
        params = conninfo_to_dict(upstream_conninfo)
        host = str(params.get("host") or "/tmp")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._family = socket.AF_UNIX
            self._address: str | tuple[str, int] = os.path.join(host, f".s.PGSQL.{port}")
        else:
            self._family = socket.AF_INET
            self._address = (host, port)
        self._upstream = upstream_conninfo
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = threading.Event()
        self._closed = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def conninfo(self) -> str:
        """The upstream connection string with host/port pointed at the proxy."""
        return make_conninfo(self._upstream, host="127.0.0.1", port=str(self.port))

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        # Wakes the accept loop at once instead of at its next timeout.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.socket(self._family, socket.SOCK_STREAM)
                upstream.connect(self._address)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)

    def __enter__(self) -> PgProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
