"""Push-mode set-up shared by the soak (module ``soak``) and the push schedules (module ``push``): the
receiver's port, its listener registered straight in the simulator, and ``startCallbacks`` over HTTP.
"""

from __future__ import annotations

import json
import socket
from typing import Final

import requests

from sync_worker import simulator
from tests.chaos import world as worldmod

SMS_SERVICE: Final = "EnhancedConnectivityService"
LISTENER_USER: Final = "soak-listener"
LISTENER_PASSWORD: Final = "soak-listener-Pw-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register_listener(sim: simulator.Simulator, account: str, port: int, password: str) -> None:
    """Register (replace) ``account``'s SMS listener, the receiver on ``port``, straight in the
    simulator (as the operator's ``callbacks register`` would; no login counted)."""
    body = json.dumps(
        {
            "name": SMS_SERVICE,
            "url": f"http://127.0.0.1:{port}/callbacks/{account}",
            "username": LISTENER_USER,
            "password": password,
        }
    ).encode()
    reply = sim.push.register(account, body)
    if reply[0] != 200:  # the platform's success
        raise RuntimeError(f"registering the listener of {account} failed: {reply[0]}")


def start_callbacks(sim: simulator.Simulator, accounts: tuple[str, ...]) -> None:
    """``startCallbacks`` for ``accounts`` over HTTP, as ``start-delivery`` does (one portal login)."""
    http = requests.Session()
    http.trust_env = False
    origin = f"http://127.0.0.1:{sim.port}"
    try:
        token = http.post(
            f"{origin}/api/ts/v1/oauth2/token",
            auth=(worldmod.CLIENT_ID, worldmod.CLIENT_SECRET),
            data={"grant_type": "client_credentials"},
            timeout=10,
        ).json()["access_token"]
        session = http.post(
            f"{origin}/api/m2m/v1/session/login",
            headers={"Authorization": f"Bearer {token}"},
            json={"username": worldmod.USERNAME, "password": worldmod.PASSWORD},
            timeout=10,
        ).json()["sessionToken"]
        headers = {"Authorization": f"Bearer {token}", "VZ-M2M-Token": session}
        for account in accounts:
            answer = http.put(
                f"{origin}/api/m2m/v1/sms/{account}/startCallbacks", headers=headers, timeout=10
            )
            answer.raise_for_status()
    finally:
        http.close()
