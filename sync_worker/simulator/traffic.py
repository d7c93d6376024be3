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


# The device and account docs/schema.md's analyst queries name (sql/queries/analyst.sql): realistic
# traffic gives that device a fifth of the messages, so every documented query has rows to show.
BUSY_DEVICE: Final = {"id": "990000862471854", "kind": "imei"}
# A device that stops talking: in realistic traffic it sends only during the first third of the span
# (about 4 hours of 12 for the default 1000 messages), so "devices that went silent" (analyst.sql)
# has one to show.
SILENT_DEVICE: Final = {"id": "356938035643809", "kind": "imei"}
_SILENT_SHARE: Final = 0.05
# Realistic traffic: one message in this many is malformed (stored and flagged, never dropped).
MALFORMED_EVERY: Final = 150
_BASE: Final = 1_714_564_800  # 2024-05-01T12:00:00Z


def _malformed(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` broken the ways a misbehaving device or platform breaks one."""
    broken = dict(message)
    way = rng.randrange(4)
    if way == 0:
        broken["message"] = rng.randrange(1000)  # a number instead of text
    elif way == 1:
        del broken["timestamp"]
    elif way == 2:
        broken["deviceIds"] = []
    else:
        broken["deviceIds"] = [{"id": 4711, "kind": "imei"}]  # an id that is not a string
    return broken


def seed_messages(n: int, seed: int = 1, *, until: float | None = None) -> list[dict[str, Any]]:
    """``n`` deterministic, realistic history messages (a few exact duplicates included).

    ``until`` None: the fixed traffic the tests rely on, from 2024-05-01T12:00:00Z on. A Unix time:
    what ``sync-worker simulate`` and the demo serve: the same kind of traffic ending just before
    ``until`` (so "the last day" has messages), the documented busy device holding a fifth of it,
    and one message in ``MALFORMED_EVERY`` malformed; deterministic for a given ``seed`` and ``until``.
    """
    if until is None:
        return _generate(n, seed, shift=0.0, busy=False)[0]
    # The same draws twice: once to learn where the traffic ends, once shifted to end at ``until``.
    _, last = _generate(n, seed, shift=0.0, busy=True)
    out, _ = _generate(n, seed, shift=float(int(until) - 1) - last, busy=True)
    mal = random.Random(f"malformed-{seed}")
    for i in range(MALFORMED_EVERY // 2, len(out), MALFORMED_EVERY):
        out[i] = _malformed(mal, out[i])
    return out


def _generate(n: int, seed: int, *, shift: float, busy: bool) -> tuple[list[dict[str, Any]], float]:
    """The messages, and the instant of the last one before ``shift`` (the draws do not depend on it)."""
    rng = random.Random(seed)
    # Its own generator: the silent device leaves every other draw as it was.
    silent = random.Random(f"silent-{seed}")
    devices = [_device(rng) for _ in range(max(1, n // 10 + 3))]
    out: list[dict[str, Any]] = []
    t = float(_BASE)
    for i in range(n):
        # Exact repeats arrive back to back (a device or the platform sending twice);
        # one copying a message from far back would be a different instant, not a repeat.
        if out and rng.random() < 0.02:
            out.append(dict(out[-1]))
            continue
        t += rng.uniform(0.5, 90.0)
        shifted = t + shift
        if rng.random() < 0.25:
            ms = int((shifted % 1) * 1000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(shifted)) + f".{ms:03d}Z"
        else:
            offset = rng.choice(_OFFSETS)
            sign = -1 if offset[0] == "-" else 1
            zone = sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(shifted + zone)) + offset
        device = rng.choice(devices)
        if busy and rng.random() < 0.2:
            device = BUSY_DEVICE
        elif busy and i < n // 3 and silent.random() < _SILENT_SHARE:
            device = SILENT_DEVICE
        out.append(
            {
                "deviceIds": [dict(device)],
                "message": f"{rng.choice(_TEXTS)} #{i}",
                "timestamp": stamp,
            }
        )
    return out, t
