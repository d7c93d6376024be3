"""SIGTERM/SIGINT for every long-running command: one stop event, and an escape hatch.

The first SIGTERM or SIGINT only sets the stop event: the block in flight commits,
nothing new starts, and the command exits cleanly. A second SIGINT (an operator
pressing Ctrl-C again) aborts the process at once with exit code 130, even with an
HTTP request or a retry wait in flight: nothing is lost by it, because a block is
acknowledged only after its commit and an interrupted transaction is rolled back
by the server when the connection drops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any, Final

from sync_worker import exitcodes

_ABORT_MESSAGE: Final = b"sync-worker: aborted by a second Ctrl-C\n"
_STOPPING_MESSAGE: Final = b"sync-worker: stopping after the work in flight (Ctrl-C again to abort)\n"
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, types.FrameType | None], Any] | int | signal.Handlers | None


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, *, enabled: bool = True) -> Iterator[None]:
    """Route SIGTERM/SIGINT to ``stop.set()`` while active (main thread only); restore after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: types.FrameType | None) -> None:
        # Runs between bytecodes of the main thread: no logging, locking or raising. A second
        # signal can run this again in the middle of the first call, so the event is set before
        # anything else: the nested call must see it and abort.
        if signum == signal.SIGINT and stop.is_set():
            _abort()
        stop.set()
        if signum == signal.SIGINT:
            _say(_STOPPING_MESSAGE)

    previous: dict[int, Handler] = {
        sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(message: bytes) -> None:
    # os.write: no buffered stream or lock that the interrupted code might hold.
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stderr.fileno(), message)


def _abort() -> None:
    _say(_ABORT_MESSAGE)
    os._exit(exitcodes.INTERRUPTED)
