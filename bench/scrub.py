"""What scrubbing one log event costs after a long life of token renewals (issue 22, item 4).

``python -m bench.scrub [renewals ...]`` renews a bearer token through ``auth.BearerTokenCache``
(as the client does: the fetch registers the token first) the given numbers of times, then times
``logs.scrub_secrets`` on a typical event. Only API that main at df24dcc has too is used, so
``PYTHONPATH=<old tree> python -m bench.scrub`` measures the registry that grew forever.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time

from sync_worker import auth, logs, secret

_EVENT = {
    "event": "block_committed",
    "account": "acct-0001",
    "logger": "sync_worker.sync",
    "level": "info",
    "timestamp": "2026-12-01T10:00:00.000000Z",
    "inserted": 100,
    "replays": 0,
    "next_token_present": True,
    "error": "ApiTransientError: server error (status 503, operation history): Service Unavailable",
}


def _renew(times: int, start: int) -> None:
    counter = itertools.count(start)

    def fetch() -> tuple[str, float]:
        # Random-looking like the vendor's: a shared prefix would let the regex engine skip ahead.
        token = hashlib.sha256(str(next(counter)).encode()).hexdigest()[:32]
        secret.register(token)
        return token, 3600.0

    now = [0.0]
    cache = auth.BearerTokenCache(fetch, margin=60.0, clock=lambda: now[0])
    for _ in range(times):
        cache.get()
        now[0] += 3600.0


def _per_event_ms(repeat: int = 2000) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            logs.scrub_secrets(None, "info", dict(_EVENT))
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1000.0


def main(argv: list[str]) -> None:
    done = 0
    for target in [int(a) for a in argv] or [0, 1_000, 10_000]:
        _renew(target - done, done)
        done = target
        print(
            f"after {done:>6,} renewals: {len(secret.known_values()):>6,} values scrubbed, "
            f"{_per_event_ms():.4f} ms per event"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
