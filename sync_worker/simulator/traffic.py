"""Deterministic, realistic history traffic for tests, the demo and the benchmarks."""

from __future__ import annotations

import dataclasses
import random
import string
import time
from typing import Any, Final

from sync_worker import errors

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


def seed_messages(
    n: int, seed: int = 1, *, until: float | None = None, shape: Shape | None = None
) -> list[dict[str, Any]]:
    """``n`` deterministic, realistic history messages (a few exact duplicates included).

    ``until`` None: the fixed traffic the tests rely on, from 2024-05-01T12:00:00Z on. A Unix time:
    what ``sync-worker simulate`` and the demo serve: the same kind of traffic ending just before
    ``until`` (so "the last day" has messages), the documented busy device holding a fifth of it,
    and one message in ``MALFORMED_EVERY`` malformed; deterministic for a given ``seed`` and ``until``.
    ``shape``: traffic of that shape instead (``shaped_messages``).
    """
    if shape is not None:
        return shaped_messages(n, seed, shape, until=until)
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


# --- traffic with knobs (`simulate --traffic`, `make bench-store`'s shapes) ---------------------------

# Texts by script: each message takes a script, then a text of it, then " #<n>".
SCRIPTS: Final[dict[str, tuple[str, ...]]] = {
    "ascii": ("Temp 21.5C battery 87%", "ALARM door open", "GPS 40.7128,-74.0060 speed 0", "heartbeat",
              "pressure=1013hPa flow=0.0", "reboot reason=watchdog"),
    "latin": ("Température 21°C, humidité 45%", "Tür geöffnet — Sensor 3", "Batería baja: 15 %",
              "Pression élevée — vérifier"),
    "cjk": ("温度 22度 电池 80%", "ドア開放 センサー2", "배터리 부족 10%"),
    "emoji": ("🔋 low battery (12%)", "🚪 door open ✅", "🌡️ 30°C ⚠️"),
    "simulator": _TEXTS,
}  # fmt: skip
# How a timestamp is written (all parse under the strict grammar but "no_offset", which parses and is
# flagged): whole seconds, milliseconds, microseconds, 7-9 digits, an offset, a space separator,
# basic form, no offset.
TIMESTAMP_FORMS: Final = (
    "seconds_z",
    "millis_z",
    "micros_z",
    "nanos_z",
    "offset",
    "space",
    "basic",
    "no_offset",
)
# The kinds a line's identifiers come in, in the order a message lists them.
_LINE_KINDS: Final = ("imei", "msisdn", "iccid", "mdn", "eid")


@dataclasses.dataclass(frozen=True)
class Shape:
    """What seeded traffic looks like.

    ``ids_per_message``: each message lists as many identifiers of its line (imei, msisdn, iccid,
    mdn, eid, in that order) as one value drawn from it, so ``(1, 1, 2, 3)`` gives half the
    messages several ids; ``scripts``: keys of ``SCRIPTS``, one drawn per message;
    ``timestamp_forms``: items of ``TIMESTAMP_FORMS``, one drawn per message; ``malformed_share``:
    the share of messages broken as a misbehaving device breaks one; ``upper_kind_share``: the
    share of identifiers whose kind is spelt in upper case.
    """

    ids_per_message: tuple[int, ...] = (1,)
    scripts: tuple[str, ...] = ("simulator",)
    timestamp_forms: tuple[str, ...] = ("millis_z", "offset")
    malformed_share: float = 0.0
    upper_kind_share: float = 0.05

    def __post_init__(self) -> None:
        if not self.ids_per_message or not all(1 <= k <= len(_LINE_KINDS) for k in self.ids_per_message):
            raise errors.ValidationError(f"ids per message must be 1-{len(_LINE_KINDS)}")
        if not self.scripts or not set(self.scripts) <= set(SCRIPTS):
            raise errors.ValidationError(f"scripts must be among {', '.join(SCRIPTS)}")
        if not self.timestamp_forms or not set(self.timestamp_forms) <= set(TIMESTAMP_FORMS):
            raise errors.ValidationError(f"timestamp forms must be among {', '.join(TIMESTAMP_FORMS)}")
        if not (0.0 <= self.malformed_share <= 1.0 and 0.0 <= self.upper_kind_share <= 1.0):
            raise errors.ValidationError("shares are between 0 and 1")


# The shapes of issue 27's targets (bench/README.md, "History store"), by name.
SHAPES: Final[dict[str, Shape]] = {
    # One id per message: the simulator's texts and timestamp forms.
    "one-id": Shape(),
    # 1-3 ids (3 messages in 8 carry several, as in the audit's corpus), every script, several forms.
    "mixed": Shape(
        ids_per_message=(1, 1, 1, 1, 1, 2, 2, 3),
        scripts=("ascii", "latin", "cjk", "emoji"),
        timestamp_forms=("seconds_z", "millis_z", "micros_z", "nanos_z", "offset", "space"),
        malformed_share=0.01,
    ),
    # Every message lists three identifiers of its line.
    "three-ids": Shape(ids_per_message=(3,)),
}


def parse_shape(spec: str) -> Shape:
    """A shape from ``NAME`` (a key of ``SHAPES``) or knobs ``key=value;...`` over the default
    (``ids=1,1,2,3;scripts=ascii,cjk;timestamps=seconds_z,nanos_z;malformed=0.02;upper=0``),
    optionally after a name (``mixed;malformed=0.1``). ``errors.ValidationError`` names what is wrong."""
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    shape = Shape()
    if parts and "=" not in parts[0]:
        if parts[0] not in SHAPES:
            raise errors.ValidationError(f"unknown traffic shape {parts[0]!r} (known: {', '.join(SHAPES)})")
        shape = SHAPES[parts.pop(0)]
    fields: dict[str, Any] = {}
    for part in parts:
        key, _, value = part.partition("=")
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        try:
            if key == "ids":
                fields["ids_per_message"] = tuple(int(v) for v in items)
            elif key == "scripts":
                fields["scripts"] = items
            elif key == "timestamps":
                fields["timestamp_forms"] = items
            elif key == "malformed":
                fields["malformed_share"] = float(value)
            elif key == "upper":
                fields["upper_kind_share"] = float(value)
            else:
                raise errors.ValidationError(
                    f"unknown traffic knob {key!r} (ids, scripts, timestamps, malformed, upper)"
                )
        except ValueError as exc:
            raise errors.ValidationError(f"traffic knob {part!r}: {exc}") from exc
    return dataclasses.replace(shape, **fields)


def _line(rng: random.Random, upper_share: float) -> list[dict[str, str]]:
    """Every identifier of one line, in _LINE_KINDS order."""
    digits = {"imei": 15, "msisdn": 11, "mdn": 10, "eid": 32}
    out = []
    for kind in _LINE_KINDS:
        if kind == "iccid":
            ident = "89" + "".join(rng.choices(string.digits, k=18))
        else:
            ident = "".join(rng.choices(string.digits, k=digits[kind]))
        if rng.random() < 0.2:
            ident = "00" + ident[2:]
        out.append({"id": ident, "kind": kind.upper() if rng.random() < upper_share else kind})
    return out


def _stamp(form: str, t: float, rng: random.Random) -> str:
    whole = int(t)
    fraction = t - whole
    if form == "offset":
        offset = rng.choice(_OFFSETS)
        sign = -1 if offset[0] == "-" else 1
        zone = sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole + zone)) + offset
    if form == "basic":
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(whole))
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if form == "millis_z":
        return f"{base}.{int(fraction * 1000):03d}Z"
    if form == "micros_z":
        return f"{base}.{int(fraction * 1_000_000):06d}Z"
    if form == "nanos_z":
        return f"{base}.{int(fraction * 1_000_000):06d}{rng.randrange(1000):03d}Z"
    if form == "space":
        return base.replace("T", " ") + "+00:00"
    if form == "no_offset":
        return base
    return base + "Z"


def shaped_messages(n: int, seed: int, shape: Shape, *, until: float | None = None) -> list[dict[str, Any]]:
    """``n`` deterministic messages of ``shape`` (2% exact repeats back to back, as in the default
    traffic), from 2024-05-01T12:00Z on, or ending a second before ``until`` (a Unix time)."""
    rng = random.Random(f"shape-{seed}")
    lines = [_line(rng, shape.upper_kind_share) for _ in range(max(1, n // 10 + 3))]
    drafts: list[tuple[float, dict[str, Any], str] | None] = []
    t = float(_BASE)
    for i in range(n):
        if drafts and rng.random() < 0.02:
            drafts.append(None)  # a repeat of the message before
            continue
        t += rng.uniform(0.5, 90.0)
        ids = rng.choice(lines)[: rng.choice(shape.ids_per_message)]
        text = f"{rng.choice(SCRIPTS[rng.choice(shape.scripts)])} #{i}"
        drafts.append(
            (t, {"deviceIds": [dict(d) for d in ids], "message": text}, rng.choice(shape.timestamp_forms))
        )
    shift = 0.0 if until is None else float(int(until) - 1) - t
    out: list[dict[str, Any]] = []
    broken = random.Random(f"shape-malformed-{seed}")
    for draft in drafts:
        if draft is None:
            out.append(dict(out[-1]))
            continue
        instant, message, form = draft
        message["timestamp"] = _stamp(form, instant + shift, rng)
        if broken.random() < shape.malformed_share:
            message = _malformed(broken, message)
        out.append(message)
    return out
