"""The vendor's OAuth rule over real HTTP: any token request during a token's hour gets that same token back.

The simulator runs with ``oauth_same_token_for_hour`` and shares an injected clock with the client, so a
run can cross the hour boundary without waiting for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sync_worker import client, errors, retry
from sync_worker import simulator as sim_mod

ACCOUNT = "0252012345-00001"
HOUR = 3600.0


class Clock:
    """One clock for the simulator and the client; a test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(simulator: sim_mod.Simulator) -> Clock:
    the_clock = Clock()
    simulator.config.clock = the_clock
    simulator.config.oauth_same_token_for_hour = True
    return the_clock


@pytest.fixture
def issued(simulator: sim_mod.Simulator) -> list[str]:
    """Every bearer token the simulator issued (a new one, not one handed back again)."""
    tokens: list[str] = []
    simulator.hooks.issued = lambda kind, token: tokens.append(token) if kind == "bearer" else None
    return tokens


def make_client(sim: sim_mod.Simulator, clock: Clock, **kw: Any) -> client.ThingSpaceClient:
    args: dict[str, Any] = {
        "base_url": sim.base_url,
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "username": sim.config.username,
        "password": sim.config.password,
        "timeout": (2.0, 5.0),
        "retry": retry.RetryPolicy(max_attempts=1, sleep=lambda _s: None, clock=clock, random=lambda: 0.0),
        "allow_insecure_loopback": True,
        "clock": clock,
    }
    args.update(kw)
    return client.ThingSpaceClient(client.ClientConfig(**args))


@pytest.fixture
def api(simulator: sim_mod.Simulator, clock: Clock) -> Iterator[client.ThingSpaceClient]:
    with make_client(simulator, clock, token_expiry_margin=60.0) as c:
        yield c


def token_request(sim: sim_mod.Simulator) -> dict[str, Any]:
    """One raw token request, as another process using the same client id would make it."""
    response = requests.post(
        f"{sim.base_url}/ts/v1/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(sim.config.client_id, sim.config.client_secret.reveal()),
        timeout=10,
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_simulator_hands_back_the_same_token_for_its_hour_and_a_new_one_after_revoke(
    simulator: sim_mod.Simulator, clock: Clock, issued: list[str]
) -> None:
    """Same token, expires_in counting down from the first issue; a new one after the hour or a revoke."""
    first = token_request(simulator)
    clock.now = 1000.5
    again = token_request(simulator)
    assert (again["access_token"], again["expires_in"]) == (first["access_token"], 2599)
    clock.now = HOUR
    after_hour = token_request(simulator)
    assert after_hour["access_token"] != first["access_token"]
    assert after_hour["expires_in"] == 3600
    revoked = requests.post(
        f"{simulator.base_url}/ts/v1/oauth2/revoke",
        data={"token": after_hour["access_token"]},
        auth=(simulator.config.client_id, simulator.config.client_secret.reveal()),
        timeout=10,
    )
    assert revoked.status_code == 200
    refused = requests.get(
        f"{simulator.base_url}/m2m/v1/sms/{ACCOUNT}/history",
        headers={"Authorization": f"Bearer {after_hour['access_token']}"},
        timeout=10,
    )
    assert refused.status_code == 401
    assert token_request(simulator)["access_token"] not in (first["access_token"], after_hour["access_token"])
    assert len(issued) == 3
    assert simulator.stats.token_revocations == 1


def test_a_token_with_less_life_than_the_margin_is_used_to_its_end_then_renewed_once(
    simulator: sim_mod.Simulator, clock: Clock, api: client.ThingSpaceClient, issued: list[str]
) -> None:
    """Another process took the token 3,590 s ago; with a 60 s margin, 200 calls across the hour's end
    cost exactly two token requests (the nearly expired token, then a fresh one) and all succeed."""
    token_request(simulator)  # the other process: the hour starts now
    clock.now = HOUR - 10
    pages = []
    for step in range(200):
        clock.now = HOUR - 10 + step / 10  # 3,590 s .. 3,609.9 s: across the hour's end
        pages.append(api.sms.list_devices_sms_messages(ACCOUNT))
    assert len(pages) == 200
    assert simulator.stats.token_requests == 1 + 2
    assert len(issued) == 2  # the other process's token, then the fresh one after the hour
    assert simulator.stats.logins == 1  # the session lived on through the new token


def test_a_refused_token_handed_back_again_costs_a_bounded_number_of_token_requests(
    simulator: sim_mod.Simulator, clock: Clock, api: client.ThingSpaceClient
) -> None:
    """The gateway refuses (401) a token the token endpoint keeps handing back: 10 calls cost two token
    requests, never a login, and 31 s later two more; every call fails instead of looping."""
    clock.now = 100.0
    simulator.faults.script("history", [401] * 40)
    failures = []
    for _ in range(10):
        with pytest.raises(errors.SyncWorkerError) as info:
            api.sms.list_devices_sms_messages(ACCOUNT)
        failures.append(type(info.value).__name__)
    assert simulator.stats.token_requests == 2
    assert failures == ["AuthError"] + ["ApiTransientError"] * 9
    clock.now += 31
    with pytest.raises(errors.AuthError):
        api.sms.list_devices_sms_messages(ACCOUNT)
    assert simulator.stats.token_requests == 4
    assert simulator.stats.login_attempts == 1


def test_a_renewal_that_brings_the_same_token_back_is_not_repeated(
    simulator: sim_mod.Simulator, clock: Clock, api: client.ThingSpaceClient, issued: list[str]
) -> None:
    """The renewal 60 s before expiry gets the same token back (60 s left): no further request until the
    hour is over, then one for a fresh token: three token requests over calls every second to 3,610 s."""
    api.sms.list_devices_sms_messages(ACCOUNT)  # t = 0: the token's hour starts
    for second in range(3530, 3611):
        clock.now = float(second)
        api.sms.list_devices_sms_messages(ACCOUNT)
    assert simulator.stats.token_requests == 3
    assert len(issued) == 2
