"""Just enough raw HTTP to talk to the simulator, for the simulator's own tests (test_simulator_*.py):
the Api client, its connected fixture and the Location token reader."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import requests

from sync_worker import simulator as sim_mod

ACCOUNT = "0252012345-00001"


class Api:
    """Just enough raw HTTP to talk to the simulator."""

    def __init__(self, sim: sim_mod.Simulator) -> None:
        self.sim = sim
        self.base = sim.base_url
        self.http = requests.Session()
        self.bearer = ""
        self.session = ""

    def token(self, client_id: str | None = None, client_secret: str | None = None) -> requests.Response:
        auth = (
            client_id or self.sim.config.client_id,
            client_secret or self.sim.config.client_secret.reveal(),
        )
        return self.http.post(
            self.base + "/ts/v1/oauth2/token", auth=auth, data={"grant_type": "client_credentials"}
        )

    def login(self, password: str | None = None) -> requests.Response:
        body = {
            "username": self.sim.config.username,
            "password": password or self.sim.config.password.reveal(),
        }
        return self.http.post(
            self.base + "/m2m/v1/session/login",
            json=body,
            headers={"Authorization": "Bearer " + self.bearer},
        )

    def connect(self) -> Api:
        self.bearer = self.token().json()["access_token"]
        self.session = self.login().json()["sessionToken"]
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.bearer, "VZ-M2M-Token": self.session}

    def history(self, next_token: str | None = None, account: str = ACCOUNT, **kw: Any) -> requests.Response:
        params = {"next": next_token} if next_token is not None else None
        quoted = urllib.parse.quote(account, safe="")
        return self.http.get(
            f"{self.base}/m2m/v1/sms/{quoted}/history", params=params, headers=self.headers(), **kw
        )

    def send(self, body: Any) -> requests.Response:
        return self.http.post(self.base + "/m2m/v1/sms", json=body, headers=self.headers())

    def start_callbacks(self, account: str = ACCOUNT) -> requests.Response:
        return self.http.put(f"{self.base}/m2m/v1/sms/{account}/startCallbacks", headers=self.headers())


def next_of(resp: requests.Response) -> str:
    location = resp.headers["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    return query["next"][0]


@pytest.fixture
def api(simulator: sim_mod.Simulator) -> Api:
    return Api(simulator).connect()
