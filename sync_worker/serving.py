"""Running a ``socketserver`` server on a background thread (the health endpoint, the simulator).

``serve_forever`` checks for ``shutdown`` every ``poll_interval`` seconds, so that value bounds how
long ``stop`` waits; the handler threads are daemons, so a stuck client never blocks the exit.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable


def start(server: socketserver.BaseServer, *, name: str, poll_interval: float) -> threading.Thread:
    """Serve on a new daemon thread named ``name``; return it for ``stop``."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
    )
    thread.start()
    return thread


def stop(
    server: socketserver.BaseServer,
    thread: threading.Thread | None,
    *,
    after_shutdown: Callable[[], None] | None = None,
    join_timeout: float | None = None,
) -> None:
    """Stop accepting, run ``after_shutdown`` (e.g. cut open connections), close the socket, join."""
    server.shutdown()
    if after_shutdown is not None:
        after_shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout=join_timeout)
