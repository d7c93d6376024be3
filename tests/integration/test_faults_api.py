"""API faults in a real sync (simulator over HTTP + Postgres): exact counts, retries as the policy says."""

from __future__ import annotations

import collections

import pytest

from sync_worker import simulator
from tests.reliability import crash, inproc

ACCOUNTS = ("0252012345-00021", "0252012345-00022")
PER_ACCOUNT = 3000


def _sim(token_mode: str = "reusable") -> crash.HookedSimulator:
    sim = crash.HookedSimulator(
        crash.crash_sim_config(ACCOUNTS, final_ack="on_next_get", token_mode=token_mode),
        simulator.Faults(seed=5),
    )
    return sim


@pytest.mark.timeout(120)
def test_sync_completes_exactly_through_transient_faults_and_session_expiry(db_url: str) -> None:
    """20% errors/timeouts/429s and a session expiry mid-paging: exact rows, retry per fault, 1 relogin."""
    sim = _sim()
    with sim:
        for account in ACCOUNTS:
            sim.inject(account, crash.make_messages(account, 0, PER_ACCOUNT, seed=3))
        # The 5th history request finds its session expired; then random faults take over.
        sim.faults.script("history", [200, 200, 200, 200, "expire_session"])
        sim.faults.error_rate = 0.12
        sim.faults.timeout_rate = 0.03
        # A "timeout" fault holds the request, then drops it unanswered: the client sees no response
        # without its read timeout having to fire. The read timeout is far above any stall of a loaded
        # machine, so every no_response below is an injected fault and the counts can be exact.
        sim.faults.timeout_seconds = 0.05
        sim.faults.rate_limit_rate = 0.05
        sim.faults.retry_after = "2"
        result, observer, slept = inproc.run_pass(sim, db_url, ACCOUNTS, read_timeout=60)
        stats = sim.stats.as_dict()

    print(f"fault run: faults={stats['faults']} retries={len(observer.retries)} logins={stats['logins']}")
    print(f"fault run: history requests={stats['history_requests']} acks={stats['acks']}")
    assert result.exit_code == 0, result.summary()
    cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.exact and cmp.rows == 2 * PER_ACCOUNT, cmp
    assert cmp.db_replays == 0
    faults = stats["faults"]
    injected = sum(faults.get(k, 0) for k in ("500", "502", "503", "timeout", "429"))
    assert injected >= 10, f"too few faults to prove anything: {faults}"
    # Every transient fault cost exactly one retry and one (fake) sleep; nothing else was retried.
    assert len(observer.retries) == injected, (faults, observer.retries)
    assert len(slept) == injected
    reasons = collections.Counter(reason for _, reason, _ in observer.retries)
    assert reasons["http_429"] == faults.get("429", 0)
    assert reasons["no_response"] == faults.get("timeout", 0)
    assert sum(reasons[f"http_{c}"] for c in (500, 502, 503)) == sum(
        faults.get(c, 0) for c in ("500", "502", "503")
    )
    # Retry-After is obeyed exactly (2 s), not replaced by the backoff.
    assert [w for _, r, w in observer.retries if r == "http_429"] == [2.0] * faults.get("429", 0)
    # One login at start, exactly one more after the expiry; no bearer churn.
    assert stats["logins"] == 2
    assert stats["failed_logins"] == 0
    assert stats["token_requests"] == 1
    for account in ACCOUNTS:
        assert set(sim.token_acks(account).values()) == {1}, "a block was acknowledged twice or never"


@pytest.mark.timeout(60)
def test_retry_after_above_the_cap_is_not_slept_through(db_url: str) -> None:
    """A 429 with Retry-After above the cap ends the run at the last committed block; next pass ends it."""
    sim = _sim()
    with sim:
        for account in ACCOUNTS:
            sim.inject(account, crash.make_messages(account, 0, 500, seed=4))
        sim.faults.retry_after = "100000"
        sim.faults.script("history", [200, 200, 429])
        result, _observer, slept = inproc.run_pass(sim, db_url, ACCOUNTS)
        assert slept == []
        failed = [a for a in result.accounts if a.outcome == "failed"]
        assert len(failed) == 1 and "429" in (failed[0].error or "")
        assert failed[0].blocks == 2, "the two blocks before the 429 must have been committed"
        # The next pass resumes from the stored cursor and finishes with nothing lost or doubled.
        sim.faults.clear()
        again, _, _ = inproc.run_pass(sim, db_url, ACCOUNTS)
        cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert again.exit_code == 0, again.summary()
    assert cmp.exact and cmp.rows == 1000 and cmp.db_replays == 0, cmp


@pytest.mark.timeout(60)
def test_lost_response_with_single_use_tokens_completes_in_one_pass(db_url: str) -> None:
    """A lost response mid-paging with single-use tokens: the retry's rejected token must not fail a pass."""
    sim = _sim(token_mode="single_use")
    with sim:
        for account in ACCOUNTS:
            sim.inject(account, crash.make_messages(account, 0, 1000, seed=6))
        sim.faults.script("history", [200, 200, 200, "lost_response"])
        result, _observer, _slept = inproc.run_pass(sim, db_url, ACCOUNTS)
        cmp = crash.compare(sim, db_url, ACCOUNTS)
    assert cmp.duplicated == 0 and cmp.unexpected == 0
    assert result.exit_code == 0, result.summary()
    assert cmp.exact, cmp
