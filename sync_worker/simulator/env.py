"""``worker_env``: the environment that points a sync worker at a simulator.

One place for it, so the demo, ``sync-worker simulate``, the tests and the benchmarks cannot drift
apart: plain http is allowed only because the simulator listens on loopback
(``THINGSPACE_ALLOW_INSECURE_LOOPBACK=1``), and the credentials are the simulator's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Final

from sync_worker.simulator import settings

# A worker subprocess inherits the parent's environment minus these: the parent's own settings
# (a developer's real THINGSPACE_*, a PG* service file) must not leak into it.
_NOT_INHERITED: Final = ("SYNC_", "THINGSPACE_", "PG")


def worker_env(
    base_url: str,
    config: settings.SimConfig | None = None,
    *,
    accounts: Iterable[str] | str | None = None,
    database_url: str | None = None,
    inherit: bool = False,
    **extra: str,
) -> dict[str, str]:
    """The variables for a worker talking to the simulator at ``base_url`` with ``config``'s credentials.

    ``accounts`` (names, or one comma-separated string) sets ``SYNC_ACCOUNTS``; ``database_url``
    sets ``SYNC_DATABASE_URL``; ``inherit`` starts from ``os.environ`` without ``SYNC_*``,
    ``THINGSPACE_*`` and ``PG*`` (for a subprocess); ``extra`` (variable names as keywords) is
    applied last and wins.
    """
    cfg = config or settings.SimConfig()
    env: dict[str, str] = {}
    if inherit:
        env.update(_inherited(os.environ))
    env.update(
        {
            "THINGSPACE_BASE_URL": base_url,
            "THINGSPACE_ALLOW_INSECURE_LOOPBACK": "1",
            "THINGSPACE_CLIENT_ID": cfg.client_id,
            "THINGSPACE_CLIENT_SECRET": cfg.client_secret.reveal(),
            "THINGSPACE_USERNAME": cfg.username,
            "THINGSPACE_PASSWORD": cfg.password.reveal(),
        }
    )
    if accounts is not None:
        env["SYNC_ACCOUNTS"] = accounts if isinstance(accounts, str) else ",".join(accounts)
    if database_url is not None:
        env["SYNC_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def _inherited(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(_NOT_INHERITED)}
