"""Client CPU per history exchange: ``python -m bench.exchange [--requests N] [--rounds R]``.

The simulator runs in its own process (``bench.proc.SimHost``) with 150 messages queued, so every
``GET .../history`` (without ``next``: nothing is acknowledged, the same full block of 100 comes
back each time) answers a 202 with a body of 100 messages. One client sends ``--requests`` of them
in a row, ``--rounds`` times; this process's CPU (``time.process_time``: the client alone) and the
wall time are reported per request, the best round and the median, as one JSON line. Run it with
``PYTHONPATH`` set to another tree to measure that tree's client the same way (issue 21: the
streamed read against a total deadline, before and after).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bench import proc

ACCOUNT = "0252012345-00001"


def main(argv: list[str]) -> int:
    from sync_worker import client, retry, secret  # the tree under test, via PYTHONPATH

    parser = argparse.ArgumentParser(prog="python -m bench.exchange")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cpu_us: list[float] = []
    wall_us: list[float] = []
    with proc.SimHost({"accounts": [ACCOUNT]}) as sim:
        sim.seed(ACCOUNT, 150)
        env = sim.env
        cfg = client.ClientConfig(
            base_url=sim.base_url,
            client_id=env["THINGSPACE_CLIENT_ID"],
            client_secret=secret.Secret(env["THINGSPACE_CLIENT_SECRET"]),
            username=env["THINGSPACE_USERNAME"],
            password=secret.Secret(env["THINGSPACE_PASSWORD"]),
            retry=retry.RetryPolicy(max_attempts=1),
            allow_insecure_loopback=True,
        )
        with client.ThingSpaceClient(cfg) as api:
            page = api.sms.list_devices_sms_messages(ACCOUNT)  # token, login, a warm connection
            assert len(page.messages) == 100 and page.status == 202, page.status
            for _ in range(args.rounds):
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.requests):
                    api.sms.list_devices_sms_messages(ACCOUNT)
                cpu_us.append((time.process_time() - cpu) / args.requests * 1e6)
                wall_us.append((time.perf_counter() - wall) / args.requests * 1e6)
    print(
        json.dumps(
            {
                "requests_per_round": args.requests,
                "rounds": args.rounds,
                "client_cpu_us_per_request": {
                    "best": round(min(cpu_us), 1),
                    "median": round(statistics.median(cpu_us), 1),
                },
                "wall_us_per_request": {
                    "best": round(min(wall_us), 1),
                    "median": round(statistics.median(wall_us), 1),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
