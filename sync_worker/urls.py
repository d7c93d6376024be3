"""The ThingSpace base URL: the one place that says which URLs the worker may talk to.

Tokens travel in headers, so only https is allowed, except plain http to a
loopback host (the project's simulator) when explicitly switched on.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Final

from sync_worker import errors

DEFAULT_BASE_URL: Final = "https://thingspace.verizon.com/api"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (the only hosts plain http may use)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(raw: str, *, allow_insecure_loopback: bool, name: str = "THINGSPACE_BASE_URL") -> str:
    """``raw`` without a trailing slash, or ``errors.ConfigError`` naming ``name``."""
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError:
        raise errors.ConfigError(f"{name} is not a valid URL") from None
    # Checked before anything echoes the URL: the userinfo may be a credential.
    if "@" in parts.netloc:
        raise errors.ConfigError(f"{name} must not contain a user name or password")
    try:
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise errors.ConfigError(f"{name}={raw!r} is not a valid URL (bad host or port)") from None
    if parts.scheme not in ("https", "http") or not host:
        raise errors.ConfigError(f"{name}={raw!r} must be an https:// URL with a host")
    if parts.query or parts.fragment:
        raise errors.ConfigError(f"{name}={raw!r} must not have a query string or fragment")
    if allow_insecure_loopback and not is_loopback_host(host):
        raise errors.ConfigError(
            f"THINGSPACE_ALLOW_INSECURE_LOOPBACK=1 is only allowed with a loopback {name} "
            f"(localhost, 127.0.0.0/8, ::1), not host {host!r}"
        )
    if parts.scheme == "http" and not allow_insecure_loopback:
        raise errors.ConfigError(
            f"{name}={raw!r} is plain http://; use https://, or set THINGSPACE_ALLOW_INSECURE_LOOPBACK=1 "
            "for a simulator on a loopback host (tokens would travel in clear)"
        )
    return raw.rstrip("/")
