"""Reading one environment variable: its text to a typed value, or ``errors.ConfigError`` naming
the variable (never its value when that is a secret). ``variables`` and ``config`` read every
setting through these."""

from __future__ import annotations

import ipaddress
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from sync_worker import errors, secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    found: list[Network] = []
    for item in stripped(env, name).split(","):
        text = item.strip()
        if not text:
            continue
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise errors.ConfigError(f"{name}: {text!r} is not an IP address or CIDR network") from None
    return tuple(found)


def textfile(env: Mapping[str, str], name: str) -> str | None:
    raw = stripped(env, name)
    if not raw:
        return None
    if not raw.endswith(".prom"):
        raise errors.ConfigError(f"{name}={raw!r} must end in .prom (node_exporter reads only *.prom)")
    if not Path(raw).parent.is_dir():
        raise errors.ConfigError(f"{name}={raw!r}: the directory {str(Path(raw).parent)!r} does not exist")
    return raw


def pushgateway(env: Mapping[str, str], name: str) -> str | None:
    raw = stripped(env, name)
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise errors.ConfigError(f"{name} must be an http(s)://host:port URL without credentials")
    return raw


def path(env: Mapping[str, str], name: str) -> Path | None:
    raw = stripped(env, name)
    return Path(raw) if raw else None


def stripped(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float = math.inf
) -> float:
    raw = stripped(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise errors.ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise errors.ConfigError(f"{name}={raw!r} must be a finite number >= {minimum:g}")
    if value > maximum:
        raise errors.ConfigError(f"{name}={raw!r} must be at most {maximum:g}")
    return value


def whole(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = optional_whole(env, name, low, high)
    return default if value is None else value


def optional_whole(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = stripped(env, name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise errors.ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise errors.ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str], *, upper: bool) -> str:
    raw = stripped(env, name)
    if not raw:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise errors.ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = stripped(env, name).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise errors.ConfigError(f"{name}={raw!r} must be 1 or 0")


def secret_value(env: Mapping[str, str], name: str) -> secret.Secret:
    file_name = f"{name}_FILE"
    # Not stripped: a secret may legitimately start or end with spaces.
    value = env.get(name, "")
    path = env.get(file_name, "").strip()
    if value and path:
        raise errors.ConfigError(f"set {name} or {file_name}, not both")
    if path:
        return read_secret_file(file_name, Path(path))
    return secret.Secret(value)


def read_secret_file(variable: str, path: Path) -> secret.Secret:
    """The secret in ``path`` (one trailing newline stripped); ``errors.ConfigError`` naming ``variable``."""
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # The path is not secret; the error text of a read failure never holds file content.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise errors.ConfigError(f"{variable}={str(path)!r} cannot be read: {reason}") from None
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise errors.ConfigError(f"{variable}={str(path)!r} is empty")
    return secret.Secret(value)
