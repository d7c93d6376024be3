"""The in-memory ThingSpace API the client tests run against (a requests adapter mounted on the
client's session: every request goes through the real client code, only the socket is replaced),
the login guard and clock they inject, and the fixtures that build clients on them."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from sync_worker import client, retry, secret

BASE = "https://ts.example/api"


ACCOUNT = "0252012345-00001"


CLIENT_SECRET = "client-secret-XYZ-123"


PASSWORD = "hunter2-password-ABC"


Reply = tuple[int, Any, dict[str, str]] | BaseException


def reply(status: int = 200, body: Any = None, **headers: str) -> Reply:
    return (status, body, {k.replace("_", "-"): v for k, v in headers.items()})


def history(n: int = 1, more: bool = False) -> dict[str, Any]:
    msg = {"deviceIds": [{"id": "1", "kind": "imei"}], "message": "m", "timestamp": "2020-01-01T00:00:00Z"}
    return {"messages": [msg] * n, "hasMoreData": more}


class FakeApi(requests.adapters.BaseAdapter):
    """Answers the token and login endpoints itself; API calls pop scripted replies."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.log: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []
        self.api: collections.deque[Reply] = collections.deque()
        self.login: collections.deque[Reply] = collections.deque()
        self.token: collections.deque[Reply] = collections.deque()
        self.issued = 0
        self.gate: threading.Event | None = None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        with self.lock:
            self.log.append((request, kwargs))
            path = request.path_url
            if path.endswith("/oauth2/token"):
                self.issued += 1
                step = (
                    self.token.popleft()
                    if self.token
                    else reply(
                        200,
                        {
                            "access_token": f"bearer-{self.issued}-tok",
                            "token_type": "Bearer",
                            "expires_in": 3600,
                        },
                    )
                )
            elif path.endswith("/session/login"):
                self.issued += 1
                step = (
                    self.login.popleft()
                    if self.login
                    else reply(200, {"sessionToken": f"sess-{self.issued}-tok"})
                )
            else:
                step = self.api.popleft() if self.api else reply(200, history())
        if self.gate is not None:
            self.gate.wait(5)
        if isinstance(step, BaseException):
            raise step
        status, body, headers = step
        resp = requests.Response()
        resp.status_code = status
        if isinstance(body, (dict, list)):
            resp._content = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        else:
            resp._content = (body or "").encode() if isinstance(body, str) or body is None else body
        resp.headers = CaseInsensitiveDict(headers)
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        pass

    def paths(self, suffix: str = "") -> list[str]:
        return [r.path_url for r, _ in self.log if r.path_url.split("?")[0].endswith(suffix)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(fake: FakeApi, clock: Clock) -> Iterator[Callable[..., client.ThingSpaceClient]]:
    made: list[client.ThingSpaceClient] = []

    def build(**kw: Any) -> client.ThingSpaceClient:
        session = requests.Session()
        session.mount("https://", fake)
        args: dict[str, Any] = {
            "base_url": BASE,
            "client_id": "cid",
            "client_secret": secret.Secret(CLIENT_SECRET),
            "username": "user",
            "password": secret.Secret(PASSWORD),
            "retry": retry.RetryPolicy(
                sleep=clock.sleep, clock=clock, random=lambda: 0.0, initial_backoff=1.0
            ),
            "session": session,
            "clock": clock,
        }
        args.update(kw)
        c = client.ThingSpaceClient(client.ClientConfig(**args))
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


ATTEMPTS = retry.DEFAULT_MAX_ATTEMPTS  # the default policy's attempts
