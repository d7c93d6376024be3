"""Child-process host for the simulator: ``python -m bench.simhost '<SimConfig kwargs as JSON>'``.

Reads one JSON command per stdin line, answers one JSON object per stdout line.
The first line it writes is ``{"base_url": ..., "worker_env": {...}}`` once the server listens:
``worker_env`` is ``Simulator.worker_env()``, the variables that point a worker at it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _history_by_account(sim: Any) -> dict[str, int]:
    """History requests per account, from the request log (the scale bench)."""
    counts: dict[str, int] = {}
    for rec in list(sim.stats.requests):
        if rec.kind == "history":
            account = rec.path.rstrip("/").split("/")[-2]
            counts[account] = counts.get(account, 0) + 1
    return counts


def main(argv: list[str]) -> int:
    from sync_worker import simulator

    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
    if "accounts" in kwargs:
        kwargs["accounts"] = tuple(kwargs["accounts"])
    sim = simulator.Simulator(simulator.SimConfig(**kwargs))
    sim.start()
    _answer({"base_url": sim.base_url, "worker_env": sim.worker_env()})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "quit":
                    _answer({"ok": True})
                    break
                if op == "seed":
                    sim.seed(cmd["account"], int(cmd["n"]), seed=int(cmd.get("seed", 1)))
                    _answer({"queued": len(sim.queued(cmd["account"]))})
                elif op == "queued":
                    _answer({"queued": len(sim.queued(cmd["account"]))})
                elif op == "acknowledged":
                    _answer({"acknowledged": len(sim.acknowledged(cmd["account"]))})
                elif op == "latency":
                    sim.faults.latency = float(cmd["seconds"])
                    _answer({"ok": True})
                elif op == "stats":
                    by_account = {"counts": _history_by_account(sim)} if cmd.get("by_account") else {}
                    _answer({"stats": sim.stats.as_dict(), **by_account})
                else:
                    _answer({"error": f"unknown op {op!r}"})
            except Exception as exc:  # the parent must see the failure, not a hang
                _answer({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
