"""The login guard's rules (auth.refusal, auth.MemoryLoginGuard) against a model of the vendor's count."""

from __future__ import annotations

import hashlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker import auth, errors, secret


@pytest.mark.parametrize(
    ("failures", "failed", "fingerprint", "threshold", "allowed"),
    [
        (0, set(), "a", 3, True),
        (2, {"a"}, "a", 3, True),
        (3, {"a"}, "a", 3, False),  # the soft stop for credentials that failed
        (3, {"a"}, "b", 3, True),  # new credentials may use the headroom
        (4, {"a", "b"}, "c", 3, False),  # the ceiling holds for any credentials
        (4, set(), "c", 4, False),
        (1, {"a"}, "a", 1, False),
        (3, {"a"}, "a", 4, True),
    ],
)
def test_refusal_rules(
    failures: int, failed: set[str], fingerprint: str, threshold: int, allowed: bool
) -> None:
    """A login is refused at the ceiling for anyone, and at the threshold for credentials that failed."""
    reason = auth.refusal(failures, frozenset(failed), fingerprint, threshold)
    assert (reason is None) == allowed


def test_threshold_must_leave_the_vendor_lock_unreached() -> None:
    """Thresholds 1..4 are accepted; 0 and 5 (the vendor's lock) are configuration errors."""
    assert [auth.check_threshold(t) for t in (1, 4)] == [1, 4]
    for bad in (0, 5):
        with pytest.raises(errors.ConfigError):
            auth.check_threshold(bad)


# What one login attempt turns out to be at the vendor, and what the client sees of it.
_EVENTS = st.sampled_from(
    [
        ("refused", "refused"),  # judged wrong, answer seen
        ("refused", "unknown"),  # judged wrong, answer lost
        ("accepted", "succeeded"),
        ("accepted", "unknown"),  # judged right, answer lost
        ("not_judged", "throttled"),  # 429/408
        ("not_judged", "unknown"),  # dropped before the platform saw it
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["pw1", "pw2", "pw3", "pw4", "pw5", "pw6"]), _EVENTS), max_size=40
    ),
    threshold=st.integers(1, 4),
)
def test_vendor_count_never_reaches_the_lock(
    steps: list[tuple[str, tuple[str, str]]], threshold: int
) -> None:
    """Whatever credentials and outcomes come, the vendor's count stays at or below the guard's, below 5."""
    g = auth.MemoryLoginGuard(threshold=threshold)
    vendor = 0
    for fingerprint, (verdict, seen) in steps:
        try:
            attempt = g.begin(fingerprint)
        except errors.LoginGuardTrippedError:
            continue
        if verdict == "refused":
            vendor += 1
        elif verdict == "accepted":
            vendor = 0
        assert vendor < 5
        g.finish(attempt, fingerprint, seen)  # type: ignore[arg-type]
        assert vendor <= g.failures <= auth.CEILING


def test_concurrent_fingerprints_of_the_same_credentials_are_computed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers asking while a fingerprint is being computed wait for it instead of hashing again
    (the pass computes it ahead; the login must not redo 200,000 iterations beside it)."""
    calls: list[bytes] = []
    started = threading.Event()
    release = threading.Event()
    real = hashlib.pbkdf2_hmac

    def slow(name: str, material: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(material)
        started.set()
        release.wait(5)
        return real(name, material, salt, 1)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", slow)
    creds = auth.Credentials("id-ahead", secret.Secret("s"), "user", secret.Secret("pw-ahead"))
    results: list[str] = []

    def fingerprint() -> None:
        results.append(creds.fingerprint("https://ahead.example/api"))

    first = threading.Thread(target=fingerprint)
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=fingerprint) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert len(calls) == 1
    assert len(results) == 4 and len(set(results)) == 1
    other = auth.Credentials("id-ahead", secret.Secret("s"), "user", secret.Secret("pw-other"))
    assert other.fingerprint("https://ahead.example/api") != results[0]
