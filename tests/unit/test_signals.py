"""signals.stop_on_signals: the first signal sets the stop event, handlers are restored after."""

from __future__ import annotations

import signal
import threading

from sync_worker import signals


def test_signal_handlers_only_set_the_event_and_are_restored() -> None:
    """Inside, SIGTERM/SIGINT only set the stop event; the previous handlers come back after."""
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals.stop_on_signals(stop):
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        assert stop.is_set()
        handler(signal.SIGTERM, None)  # a second SIGTERM is still only a stop request
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_disabled_or_off_the_main_thread_leaves_handlers_alone() -> None:
    """Disabled, or run from another thread, nothing is installed (Python would refuse anyway)."""
    seen: list[object] = []
    before = signal.getsignal(signal.SIGTERM)

    def in_thread() -> None:
        with signals.stop_on_signals(threading.Event()):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    with signals.stop_on_signals(threading.Event(), enabled=False):
        seen.append(signal.getsignal(signal.SIGTERM))
    assert seen == [before, before]
