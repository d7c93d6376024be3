"""The peer: the same backlog synced by dlt (REST client + Postgres destination, merge).

This is what a team would write instead of the worker: dlt's ``RESTClient``
paginating the history endpoint with a small custom paginator that reads the
``next`` token out of ``Location`` (the API's own paging), and a resource with
``write_disposition="merge"`` on the message key, loaded into the same Postgres.
dlt is pinned (``dlt[postgres]==1.31.0`` in the bench extra).

Two loaders are measured: dlt's default for Postgres (``insert_values``, multi-row INSERT
statements) and its CSV loader (``loader_file_format="csv"``, ``COPY``).

Note what the peer does differently by design: dlt extracts the whole backlog
before it loads anything, so every block is acknowledged (the next GET sent)
long before its rows are durable. It is faster to write and measure, and it
would lose the backlog on a crash; the worker commits each block first.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import requests

# A key function gets (account, raw messages of one block) and returns one key per message.
KeyFn = Callable[[str, list[Any]], list[str]]


def fallback_keys(account: str, messages: list[Any]) -> list[str]:
    """Account + canonical devices + timestamp + text + occurrence in the block.

    Used only when ``sync_worker.rows`` offers no batch key function; it follows
    the identity rule of issue 3 so the peer deduplicates on the same thing.
    """
    seen: dict[str, int] = {}
    keys: list[str] = []
    for msg in messages:
        if isinstance(msg, dict):
            devices = sorted(
                f"{str(d.get('kind', '')).lower()}:{d.get('id', '')}"
                for d in msg.get("deviceIds") or []
                if isinstance(d, dict)
            )
            base = json.dumps([account, devices, msg.get("timestamp"), msg.get("message")])
        else:
            base = json.dumps([account, "raw", msg])
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys.append(hashlib.sha256(f"{base}#{n}".encode()).hexdigest())
    return keys


def login(base_url: str, client_id: str, client_secret: str, username: str, password: str) -> dict[str, str]:
    """OAuth client credentials, then the session login: the two headers every call needs."""
    with requests.Session() as s:
        tok = s.post(
            f"{base_url}/ts/v1/oauth2/token",
            auth=(client_id, client_secret),
            data={"grant_type": "client_credentials"},
            timeout=30,
        )
        tok.raise_for_status()
        bearer = tok.json()["access_token"]
        sess = s.post(
            f"{base_url}/m2m/v1/session/login",
            headers={"Authorization": f"Bearer {bearer}"},
            json={"username": username, "password": password},
            timeout=30,
        )
        sess.raise_for_status()
        return {"Authorization": f"Bearer {bearer}", "VZ-M2M-Token": sess.json()["sessionToken"]}


@dataclasses.dataclass
class PeerResult:
    rows: int
    blocks: int
    seconds: float
    extract_seconds: float
    load_seconds: float


def dlt_credentials(dsn: str) -> str:
    """dlt wants a URL; a libpq unix-socket DSN keeps its socket directory as the ``host`` query key."""
    from psycopg import conninfo

    parts = conninfo.conninfo_to_dict(dsn)
    host = str(parts.get("host") or "localhost")
    user = urllib.parse.quote(str(parts.get("user") or "postgres"))
    # dlt insists on a password; the embedded server trusts local connections.
    password = urllib.parse.quote(str(parts.get("password") or "unused"))
    db = urllib.parse.quote(str(parts.get("dbname") or "postgres"))
    port = int(parts.get("port") or 5432)
    if host.startswith("/"):
        # dlt requires a host; libpq lets the query's host (the socket directory) win.
        query = urllib.parse.urlencode({"host": host})
        return f"postgresql://{user}:{password}@localhost:{port}/{db}?{query}"
    return f"postgresql://{user}:{password}@{host}:{port}/{db}"


def make_paginator() -> Any:
    from dlt.sources.helpers.rest_client.paginators import BasePaginator

    class LocationNextPaginator(BasePaginator):
        """202 + ``Location: /sms/{aname}/history?next=T`` means more; take only the token."""

        def __init__(self) -> None:
            super().__init__()
            self.token: str | None = None

        def update_state(self, response: Any, data: Any = None) -> None:
            location = response.headers.get("Location")
            if response.status_code == 202 and location:
                query = urllib.parse.urlsplit(location).query
                values = urllib.parse.parse_qs(query).get("next")
                self.token = values[0] if values else None
            else:
                self.token = None
            self._has_next_page = self.token is not None

        def update_request(self, request: Any) -> None:
            if request.params is None:
                request.params = {}
            request.params["next"] = self.token

    return LocationNextPaginator()


def run_peer(
    *,
    base_url: str,
    account: str,
    database_url: str,
    headers: dict[str, str],
    key_fn: KeyFn = fallback_keys,
    dataset: str = "dlt_peer",
    loader_file_format: Literal["csv"] | None = None,
) -> PeerResult:
    """Drain ``account`` from the simulator into Postgres with dlt; return the timings.

    ``loader_file_format`` None is dlt's default for Postgres (``insert_values``: INSERT
    statements); ``"csv"`` loads with ``COPY``, its faster loader.
    """
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt
    from dlt.sources.helpers.rest_client.client import RESTClient

    blocks = 0

    @dlt.resource(name="sms_history", write_disposition="merge", primary_key="message_key")
    def history() -> Iterator[list[dict[str, Any]]]:
        nonlocal blocks
        client = RESTClient(base_url=f"{base_url}/m2m/v1", headers=headers, paginator=make_paginator())
        path = f"/sms/{urllib.parse.quote(account, safe='')}/history"
        for page in client.paginate(path, data_selector="messages"):
            blocks += 1
            raw = list(page)
            keys = key_fn(account, raw)
            yield [
                {
                    "account_name": account,
                    "message_key": key,
                    "device_ids": m.get("deviceIds") if isinstance(m, dict) else None,
                    "message": m.get("message") if isinstance(m, dict) else None,
                    "timestamp": m.get("timestamp") if isinstance(m, dict) else None,
                }
                for key, m in zip(keys, raw, strict=True)
            ]

    with tempfile.TemporaryDirectory(prefix="dlt-bench-") as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name=f"bench_peer_{account.replace('-', '_')}",
            destination=dlt.destinations.postgres(credentials=dlt_credentials(database_url)),
            dataset_name=dataset,
            pipelines_dir=pipelines_dir,
        )
        started = time.perf_counter()
        pipeline.extract(history(), loader_file_format=loader_file_format)
        extracted = time.perf_counter()
        pipeline.normalize()
        pipeline.load()
        finished = time.perf_counter()
        with pipeline.sql_client() as sql:
            rows = sql.execute_sql(f"SELECT count(*) FROM {dataset}.sms_history")
        count = int(rows[0][0]) if rows else 0
    return PeerResult(
        rows=count,
        blocks=blocks,
        seconds=finished - started,
        extract_seconds=extracted - started,
        load_seconds=finished - extracted,
    )


def worker_keys(account: str, raw: list[Any]) -> list[str]:
    """The worker's own identity rule (``rows.build_rows``), so both sides deduplicate on the same key."""
    from sync_worker import models, rows

    return [r.message_key for r in rows.build_rows(account, [models.SMSMessage.from_wire(m) for m in raw])]


def main(argv: Sequence[str] | None = None) -> int:
    """One drain as a whole process: log in, drain ``--account`` into ``--database-url``, print JSON.

    ``bench.compare`` times this process from start to exit (dlt's import and the login included,
    as the worker's are); the API's address and credentials come from the environment the
    simulator hands out (``THINGSPACE_*``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_dlt", description=main.__doc__)
    parser.add_argument("--account", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--csv", action="store_true", help="dlt's CSV loader (COPY) instead of its default")
    args = parser.parse_args(argv)
    env = os.environ
    base_url = env["THINGSPACE_BASE_URL"]
    headers = login(
        base_url,
        env["THINGSPACE_CLIENT_ID"],
        env["THINGSPACE_CLIENT_SECRET"],
        env["THINGSPACE_USERNAME"],
        env["THINGSPACE_PASSWORD"],
    )
    result = run_peer(
        base_url=base_url,
        account=args.account,
        database_url=args.database_url,
        headers=headers,
        key_fn=worker_keys,
        loader_file_format="csv" if args.csv else None,
    )
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
