"""The platform's auth model: OAuth bearer tokens, M2M session tokens and the login lock-out.

Bearers expire ``bearer_ttl`` after issue; with ``oauth_same_token_for_hour`` a token request
during that time returns the same token (``expires_in`` counting down), as the vendor does, until
it expires or is revoked (``POST /api/ts/v1/oauth2/revoke``, form ``token=...``). Sessions expire
after ``session_idle_timeout`` without use. ``max_failed_logins`` consecutive failures lock the
user (even against the right password) until ``unlock``. A user is its case-folded name: the
count, the lock and the password check treat ``Sim-User`` and ``sim-user`` as one user (the safe
assumption about the vendor, which the login guard mirrors), whatever host name or port spelling
the request came through.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import urllib.parse
from collections.abc import Callable

from sync_worker.simulator import counters, settings, wire


class AuthState:
    """Issued tokens and failed-login counts, behind one lock.

    The settings are passed per call because ``Simulator.config`` may be changed while it runs.
    """

    def __init__(self, stats: counters.Stats, issued: Callable[[str, str], None]) -> None:
        self._stats = stats
        # Told (kind, token) after every issue, outside the lock.
        self._issued = issued
        self._lock = threading.Lock()
        self._bearers: dict[str, float] = {}
        # With oauth_same_token_for_hour: the token each client id was last issued.
        self._current: dict[str, str] = {}
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # The longest run of failed logins each user ever had: what a test asserts stays below the lock.
        self._peak: dict[str, int] = {}

    def expire(self, what: str) -> None:
        """Forget every ``"session"`` token, or else every bearer token."""
        with self._lock:
            if what == "session":
                self._sessions.clear()
            else:
                self._bearers.clear()
                self._current.clear()

    def unlock(self, username: str | None = None) -> None:
        with self._lock:
            if username is None:
                self._failures.clear()
            else:
                self._failures.pop(_user(username), None)

    def failed_streak(self, username: str) -> int:
        """Consecutive failed logins of ``username`` now (the vendor's count)."""
        with self._lock:
            return self._failures.get(_user(username), 0)

    def peak_failed_streak(self, username: str) -> int:
        """The highest the count of ``username`` ever was (``unlock`` does not lower it)."""
        with self._lock:
            return self._peak.get(_user(username), 0)

    def bearer_ok(self, cfg: settings.SimConfig, header: str | None) -> bool:
        if not header or header[:7].lower() != "bearer ":
            return False
        with self._lock:
            expiry = self._bearers.get(header[7:].strip())
        return expiry is not None and expiry > cfg.clock()

    def session_ok(self, cfg: settings.SimConfig, token: str | None) -> bool:
        """Whether ``token`` is a live session; a use keeps it alive for another idle period."""
        if not token:
            return False
        now = cfg.clock()
        with self._lock:
            last = self._sessions.get(token)
            if last is None or now - last > cfg.session_idle_timeout:
                self._sessions.pop(token, None)
                return False
            self._sessions[token] = now
            return True

    def logout(self, token: str) -> wire.Reply:
        with self._lock:
            self._sessions.pop(token, None)
        return wire.json_reply(200, wire.dumps({"sessionToken": token}))

    def token(self, cfg: settings.SimConfig, authorization: str, body: bytes) -> wire.Reply:
        """``POST /oauth2/token``: Basic client credentials, ``grant_type=client_credentials``."""
        refused = _client_refused(cfg, authorization)
        if refused is not None:
            return refused
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            error = {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            }
            return wire.json_reply(400, wire.dumps(error))
        now = cfg.clock()
        with self._lock:
            token = self._current.get(cfg.client_id, "") if cfg.oauth_same_token_for_hour else ""
            expiry = self._bearers.get(token)
            fresh = expiry is None or expiry <= now
            if fresh:
                token = wire.new_token(32)
                expiry = now + cfg.bearer_ttl
                self._bearers[token] = expiry
                self._current[cfg.client_id] = token
        assert expiry is not None  # noqa: S101  # for mypy: set above when missing
        payload = {
            "access_token": token,
            "scope": "default",
            "token_type": "bearer",
            # Whole seconds left, rounded down like a countdown: 0 in the token's last second. Rounded
            # to the microsecond first: (now + 3600.0) - now is 3599.99999... for many clock values.
            "expires_in": max(math.floor(round(expiry - now, 6)), 0),
        }
        if fresh:
            self._issued("bearer", token)
        return wire.json_reply(200, wire.dumps(payload))

    def revoke(self, cfg: settings.SimConfig, authorization: str, body: bytes) -> wire.Reply:
        """``POST /oauth2/revoke``: Basic client credentials, form ``token``; 200 whether it was known."""
        refused = _client_refused(cfg, authorization)
        if refused is not None:
            return refused
        token = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        with self._lock:
            self._bearers.pop(token, None)
            if self._current.get(cfg.client_id) == token:
                del self._current[cfg.client_id]
        return wire.json_reply(200, b"{}")

    def login(self, cfg: settings.SimConfig, body: bytes) -> wire.Reply:
        """``POST /session/login``: JSON ``{username, password}``, counted against the lock-out."""
        try:
            creds = json.loads(body)
        except ValueError:
            creds = None
        if not isinstance(creds, dict):
            return wire.json_reply(400, wire.m2m_error(wire.CODE_INVALID_REQUEST, "Malformed request body."))
        ok = False
        token = ""
        user = _user(str(creds.get("username")))
        password = creds.get("password")
        with self._lock:
            failures = self._failures.get(user, 0)
            if failures >= cfg.max_failed_logins:
                locked = True
            else:
                locked = False
                ok = user == _user(cfg.username) and password == cfg.password.reveal()
                if ok:
                    self._failures.pop(user, None)
                    token = wire.new_token(32)
                    self._sessions[token] = cfg.clock()
                else:
                    self._failures[user] = failures + 1
                    self._peak[user] = max(self._peak.get(user, 0), failures + 1)
        if locked:
            self._stats.bump("failed_logins")
            message = "User account is locked. Contact support to unlock it."
            return wire.json_reply(400, wire.m2m_error(wire.CODE_USER_LOCKED, message))
        if not ok:
            self._stats.bump("failed_logins")
            message = "Invalid username or password."
            return wire.json_reply(400, wire.m2m_error(wire.CODE_INVALID_CREDENTIALS, message))
        self._stats.bump("logins")
        self._issued("session", token)
        return wire.json_reply(200, wire.dumps({"sessionToken": token}))


def _client_refused(cfg: settings.SimConfig, authorization: str) -> wire.Reply | None:
    """The 401 for a request whose Basic client credentials are not the configured ones."""
    client_id = client_secret = None
    if authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            client_id, _, client_secret = decoded.partition(":")
        except ValueError:
            pass
    if client_id != cfg.client_id or client_secret != cfg.client_secret.reveal():
        error = {"error": "invalid_client", "error_description": "Client authentication failed"}
        return wire.json_reply(401, wire.dumps(error))
    return None


def _user(username: str) -> str:
    return username.casefold()
