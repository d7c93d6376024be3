"""The secret registry the log scrubber uses: bounded, with a grace list, one pattern per change."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sync_worker import auth, logs, secret

RENEWALS = 10_000


@pytest.fixture(autouse=True)
def _empty_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from an empty registry; the process's own is put back afterwards."""
    for name in ("_held", "_registered", "_retired"):
        monkeypatch.setattr(secret, name, {})
    monkeypatch.setattr(secret, "_pattern", None)
    yield


def token(n: int) -> str:
    # Random-looking, as the vendor's are.
    return hashlib.sha256(f"token-{n}".encode()).hexdigest()[:32]


def client_like_fetch() -> tuple[Callable[[], tuple[str, float]], list[str]]:
    """A bearer fetch that registers its token first, as ThingSpaceClient._fetch_bearer does."""
    issued: list[str] = []
    counter = itertools.count()

    def fetch() -> tuple[str, float]:
        value = token(next(counter))
        secret.register(value)
        issued.append(value)
        return value, 3600.0

    return fetch, issued


def test_registry_is_bounded_after_10000_bearer_renewals() -> None:
    """10,000 expiry renewals leave exactly the current token plus the last GRACE replaced ones."""
    fetch, issued = client_like_fetch()
    now = [0.0]
    cache = auth.BearerTokenCache(fetch, margin=60.0, clock=lambda: now[0])
    for _ in range(RENEWALS):
        cache.get()
        now[0] += 3600.0
    assert len(issued) == RENEWALS
    assert secret.known_values() == frozenset(issued[-(secret.GRACE + 1) :])
    assert len(secret.known_values()) == secret.GRACE + 1


def test_registry_is_bounded_after_10000_session_renewals() -> None:
    """10,000 sessions ended by the platform (invalidate, then a new login) leave the same bound."""
    counter = itertools.count()
    issued: list[str] = []

    def log_in(_deadline: float | None) -> str:
        value = token(next(counter))
        secret.register(value)  # as ThingSpaceClient._log_in does
        issued.append(value)
        return value

    cache = auth.SessionTokenCache(log_in)
    for _ in range(RENEWALS):
        cache.invalidate(cache.get())
    current = cache.get()
    assert secret.known_values() == frozenset([current, *issued[-(secret.GRACE + 1) : -1]])


def test_bearer_dropped_after_a_401_leaves_the_registry() -> None:
    """A bearer invalidated after a 401 is out of the live registry, in the grace list until pushed out."""
    fetch, issued = client_like_fetch()
    # Each call half a minute after the last: past the cache's limit on token requests after a 401.
    ticks = itertools.count(step=31.0)
    cache = auth.BearerTokenCache(fetch, clock=lambda: float(next(ticks)))
    stale = cache.get()
    cache.invalidate(stale)
    assert secret.scrub(f"Bearer {stale}") == "Bearer **********"  # still in the grace list
    for _ in range(secret.GRACE):
        cache.invalidate(cache.get())
    assert stale not in secret.known_values()
    assert secret.scrub(f"Bearer {stale}") == f"Bearer {stale}"
    assert len(issued) == secret.GRACE + 1


def test_a_replaced_token_is_scrubbed_through_the_grace_list() -> None:
    """The token just replaced is still scrubbed (it stays valid at the vendor for the margin)."""
    secret.register(token(0))
    secret.replace(token(0), token(1))
    line = f"retry with {token(0)} failed; now {token(1)}"
    assert secret.scrub(line) == "retry with ********** failed; now **********"


def test_configured_credentials_survive_any_token_churn() -> None:
    """A password held as a Secret stays scrubbed through 10,000 renewals and a full token cap."""
    password = secret.Secret("configured-password-9")
    fetch, _ = client_like_fetch()
    now = [0.0]
    cache = auth.BearerTokenCache(fetch, clock=lambda: now[0])
    for _ in range(RENEWALS):
        cache.get()
        now[0] += 3600.0
    for n in range(RENEWALS, RENEWALS + secret.MAX_REGISTERED * 2):
        secret.register(token(n))
    assert secret.scrub("password=configured-password-9") == "password=**********"
    assert password.reveal() in secret.known_values()


def test_tokens_nothing_replaces_are_capped() -> None:
    """10,000 tokens registered and never replaced: the newest MAX_REGISTERED plus GRACE remain."""
    for n in range(RENEWALS):
        secret.register(token(n))
    known = secret.known_values()
    assert known == frozenset(
        token(n) for n in range(RENEWALS - secret.MAX_REGISTERED - secret.GRACE, RENEWALS)
    )
    assert secret.scrub(token(RENEWALS - 1)) == "**********"


def test_secrets_built_in_a_loop_are_capped() -> None:
    """Secret objects are capped too (oldest out first); one built again counts as the newest."""
    first = secret.Secret(token(0))
    for n in range(1, secret.MAX_HELD * 3):
        secret.Secret(token(n))
        if n % 16 == 0:
            secret.Secret(first.reveal())  # read again, like a secret file at each login
    assert first.reveal() in secret.known_values()
    assert len(secret.known_values()) == secret.MAX_HELD + secret.GRACE


def test_a_secret_inside_a_longer_one_never_leaves_a_fragment() -> None:
    """Where one secret contains another, the whole longer value is redacted, not its tail."""
    secret.register("abcd1234")
    secret.register("abcd1234efgh5678")
    assert secret.scrub("x abcd1234efgh5678 y abcd1234 z") == "x ********** y ********** z"


def test_one_pattern_per_registry_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrubbing many events compiles one pattern; only a change of the registry compiles another."""
    compiled: list[str] = []
    real = re.compile

    def counting(pattern: Any, flags: int = 0) -> re.Pattern[str]:
        compiled.append(pattern)
        return real(pattern, flags)

    monkeypatch.setattr(re, "compile", counting)
    for n in range(100):
        secret.register(token(n))
    event = {"event": "x", "error": f"failed with {token(5)} and {token(99)} " * 3, "n": 1}
    for _ in range(1000):
        scrubbed = logs.scrub_secrets(None, "info", dict(event))
    assert token(5) not in scrubbed["error"] and token(99) not in scrubbed["error"]
    assert len(compiled) == 1
    secret.register(token(100))
    secret.scrub(token(100))
    assert len(compiled) == 2
