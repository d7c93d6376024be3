"""``serve``: a simulator as a foreground process; what ``sync-worker simulate`` (and so the Compose
``simulator`` service) runs."""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, TextIO

from sync_worker import errors, signals
from sync_worker.simulator import core, settings, traffic

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8480
DEFAULT_SEED_MESSAGES: Final = 1000
DEFAULT_ACCOUNTS: Final = ("0252012345-00001", "0252012345-00002")


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    seed_messages: int = DEFAULT_SEED_MESSAGES,
    accounts: Sequence[str] = DEFAULT_ACCOUNTS,
    *,
    block_size: int | None = None,
    seed: int = 1,
    config: settings.SimConfig | None = None,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    ready: Callable[[core.Simulator], None] | None = None,
    start: float | None = None,
    shape: traffic.Shape | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, printing the exports that reach it.

    Account ``i`` gets ``seed_messages`` messages from ``seed_messages(n, seed + i, until=start)``:
    traffic that ends just before ``start`` (default: now), the documented busy device and a few
    malformed messages included, so the analyst queries of docs/schema.md have rows to show; with
    ``shape``, traffic of that shape instead (``traffic.shaped_messages``, ``simulate --traffic``). ``port=0``
    picks a free port (the printed URL names it). ``ready(sim)`` runs once it listens and is seeded.
    Signals are handled as by every long-running command (``signals.stop_on_signals``: a second
    Ctrl-C aborts) when called on the main thread. An address it cannot listen on (a busy port, an
    unknown host): ``errors.ConfigError`` naming it, before anything is printed.
    """
    cfg = config or settings.SimConfig()
    cfg.host, cfg.port, cfg.accounts = host, port, tuple(accounts)
    if block_size is not None:
        cfg.block_size = block_size
    stream = out or sys.stdout
    stop_event = stop or threading.Event()
    until = time.time() if start is None else start
    sim = core.Simulator(cfg)
    try:
        sim.start()
    except OSError as exc:
        raise errors.ConfigError(
            f"the simulator cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another simulator running? pass --port P, or --port 0 for any free port)"
        ) from exc
    try:
        # Installed before the first line is printed: a caller may signal as soon as it reads one.
        with signals.stop_on_signals(stop_event):
            if seed_messages:
                for i, account in enumerate(cfg.accounts):
                    sim.seed(account, seed_messages, seed=seed + i, until=until, shape=shape)
            # The simulator's credentials are fixed, public test values: printing them is the point.
            # Every line is shell (comments and exports), so the output can be sourced or eval-ed:
            # `sync-worker simulate > sim.env &` then `. ./sim.env`.
            lines = [
                f"# ThingSpace simulator listening on {sim.base_url}",
                f"# seeded {seed_messages} messages on each of: {', '.join(cfg.accounts)} "
                f"(up to {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}, one in "
                f"{traffic.MALFORMED_EVERY} malformed)"
                if shape is None
                else f"# seeded {seed_messages} messages on each of: {', '.join(cfg.accounts)} "
                f"(up to {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}, shape {shape})",
                "# the variables that point the worker at it:",
                *(f"export {k}={shlex.quote(v)}" for k, v in sim.worker_env(accounts=cfg.accounts).items()),
                "# Ctrl-C (or SIGTERM) stops it.",
            ]
            print("\n".join(lines), file=stream, flush=True)
            if ready is not None:
                ready(sim)
            stop_event.wait()
    finally:
        sim.stop()
