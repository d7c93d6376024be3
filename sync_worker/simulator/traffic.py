"""Deterministic, realistic history traffic for tests, the demo and the benchmarks."""

from __future__ import annotations

import random
import string
import time
from typing import Any, Final

_TEXTS: Final = (
    "Temp 21.5C battery 87%",
    "Température 21°C, humidité 45%",
    "ALARM door open",
    "GPS 40.7128,-74.0060 speed 0",
    "温度 22度 电池 80%",
    "🔋 low battery (12%)",
    "heartbeat",
    "Tür geöffnet — Sensor 3",
    "pressure=1013hPa flow=0.0",
    "reboot reason=watchdog",
)
_OFFSETS: Final = ("-08:00", "-05:00", "+00:00", "+05:30", "-07:00", "+01:00")


def _device(rng: random.Random) -> dict[str, str]:
    kind = rng.choice(("imei", "iccid", "mdn", "msisdn", "meid", "esn", "eid"))
    digits = {"imei": 15, "mdn": 10, "msisdn": 11, "esn": 11, "eid": 32}
    if kind == "iccid":
        ident = "89" + "".join(rng.choices(string.digits, k=18))
    elif kind == "meid":
        ident = "".join(rng.choices("0123456789ABCDEF", k=14))
    else:
        ident = "".join(rng.choices(string.digits, k=digits[kind]))
    if rng.random() < 0.2:
        # Leading zeros matter: the store must keep ids as strings.
        ident = "00" + ident[2:]
    if rng.random() < 0.05:
        kind = kind.upper()
    return {"id": ident, "kind": kind}


def seed_messages(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` deterministic, realistic history messages (a few exact duplicates included)."""
    rng = random.Random(seed)
    devices = [_device(rng) for _ in range(max(1, n // 10 + 3))]
    base = 1_714_564_800  # 2024-05-01T12:00:00Z
    out: list[dict[str, Any]] = []
    t = float(base)
    for i in range(n):
        # Exact repeats arrive back to back (a device or the platform sending twice);
        # one copying a message from far back would be a different instant, not a repeat.
        if out and rng.random() < 0.02:
            out.append(dict(out[-1]))
            continue
        t += rng.uniform(0.5, 90.0)
        if rng.random() < 0.25:
            ms = int((t % 1) * 1000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"
        else:
            offset = rng.choice(_OFFSETS)
            sign = -1 if offset[0] == "-" else 1
            shift = sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + shift)) + offset
        device = rng.choice(devices)
        out.append(
            {
                "deviceIds": [dict(device)],
                "message": f"{rng.choice(_TEXTS)} #{i}",
                "timestamp": stamp,
            }
        )
    return out
