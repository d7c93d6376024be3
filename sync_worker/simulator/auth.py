"""The platform's auth model: OAuth bearer tokens, M2M session tokens and the login lock-out.

Bearers expire ``bearer_ttl`` after issue; sessions expire after ``session_idle_timeout`` without
use; ``max_failed_logins`` consecutive failures lock the user (even against the right password)
until ``unlock``. With ``username_case_insensitive`` the count is kept per case-folded user name
(``user_key``), and a login's user name matches whatever its case.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Callable

from sync_worker.simulator import counters, settings, wire


def user_key(cfg: settings.SimConfig, username: object) -> str:
    """The key failed logins are counted under: the user name, case-folded when names are caseless."""
    name = str(username)
    return name.casefold() if cfg.username_case_insensitive else name


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

    def unlock(self, username: str | None = None) -> None:
        with self._lock:
            if username is None:
                self._failures.clear()
            else:
                self._failures.pop(username, None)

    def failed_streak(self, username: str) -> int:
        """Consecutive failed logins of ``username`` now (the vendor's count)."""
        with self._lock:
            return self._failures.get(username, 0)

    def peak_failed_streak(self, username: str) -> int:
        """The highest the count of ``username`` ever was (``unlock`` does not lower it)."""
        with self._lock:
            return self._peak.get(username, 0)

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
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            error = {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            }
            return wire.json_reply(400, wire.dumps(error))
        token = wire.new_token(32)
        with self._lock:
            self._bearers[token] = cfg.clock() + cfg.bearer_ttl
        payload = {
            "access_token": token,
            "scope": "default",
            "token_type": "bearer",
            "expires_in": int(cfg.bearer_ttl),
        }
        self._issued("bearer", token)
        return wire.json_reply(200, wire.dumps(payload))

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
        username = creds.get("username")
        password = creds.get("password")
        key = user_key(cfg, username)
        with self._lock:
            failures = self._failures.get(key, 0)
            if failures >= cfg.max_failed_logins:
                locked = True
            else:
                locked = False
                ok = (
                    isinstance(username, str)
                    and key == user_key(cfg, cfg.username)
                    and password == cfg.password.reveal()
                )
                if ok:
                    self._failures.pop(key, None)
                    token = wire.new_token(32)
                    self._sessions[token] = cfg.clock()
                else:
                    self._failures[key] = failures + 1
                    self._peak[key] = max(self._peak.get(key, 0), failures + 1)
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
