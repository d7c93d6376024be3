"""``serve``: a simulator as a foreground process (``sync-worker simulate``, the Compose service)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from sync_worker.simulator import core, settings


def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    seed_messages: int = 0,
    accounts: Sequence[str] = ("0252012345-00001",),
    *,
    seed: int = 1,
    config: settings.SimConfig | None = None,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> None:
    """Run a simulator until ``stop`` is set (or KeyboardInterrupt), printing how to reach it."""
    cfg = config or settings.SimConfig()
    cfg.host, cfg.port, cfg.accounts = host, port, tuple(accounts)
    stream = out or sys.stdout
    sim = core.Simulator(cfg)
    for i, account in enumerate(cfg.accounts):
        if seed_messages:
            sim.seed(account, seed_messages, seed=seed + i)
    stop_event = stop or threading.Event()
    with sim:
        # These are the simulator's own fixed demo credentials, not real secrets.
        print(f"ThingSpace simulator listening on {sim.base_url}", file=stream)
        print(f"  client id:     {cfg.client_id}", file=stream)
        print(f"  client secret: {cfg.client_secret.reveal()}", file=stream)
        print(f"  username:      {cfg.username}", file=stream)
        print(f"  password:      {cfg.password.reveal()}", file=stream)
        print(f"  accounts:      {', '.join(cfg.accounts)} ({seed_messages} messages each)", file=stream)
        stream.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop_event.wait()
