"""app's wiring of the probes, over a real loopback socket (no database: one that refuses connections)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from sync_worker import app, config, errors, guard, metrics

# Nothing listens on port 1 of the loopback: a connection is refused at once.
UNREACHABLE = "postgresql://probe@127.0.0.1:1/nowhere"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings(**env: str) -> config.Settings:
    return config.load(
        {"SYNC_DATABASE_URL": UNREACHABLE, **env}, require_credentials=False, require_accounts=False
    )


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_asks_the_database_first_then_the_checks_it_was_handed() -> None:
    """With SYNC_METRICS_PORT, app.health_server serves /healthz from `live` and /readyz from the
    database check (app.database_ready) before the others: a database out of reach is the reason, and
    the checks after it are not asked."""
    port = free_port()
    asked: list[str] = []

    def claims() -> None:
        asked.append("claims")

    with app.health_server(
        settings(SYNC_METRICS_PORT=str(port)),
        metrics.Metrics(),
        live=lambda: True,
        ready=[("claims", claims)],
    ):
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/healthz")[0] == 200
        status, body = get(base + "/readyz")
    assert status == 503
    assert str(body["reason"]).startswith("database: SYNC_DATABASE_URL: cannot connect")
    assert asked == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_no_health_server_without_a_port() -> None:
    """Without SYNC_METRICS_PORT, app.health_server serves nothing and asks nothing."""
    asked: list[str] = []

    def live() -> bool:
        asked.append("live")
        return True

    with app.health_server(settings(), metrics.Metrics(), live=live, ready=[("claims", lambda: None)]):
        pass
    assert asked == []


def test_guard_ready_refuses_while_the_guard_does() -> None:
    """The login_guard readiness check raises LoginGuardTrippedError with the guard's own reason
    while the guard refuses, and passes once it does not."""
    tripped = guard.GuardStatus(guard.GuardState(failures=3), threshold=3, blocked="3 failed logins in a row")
    fine = guard.GuardStatus(guard.GuardState(), threshold=3, blocked=None)
    seen = [tripped]
    check = app.guard_ready(lambda: seen[-1])
    with pytest.raises(errors.LoginGuardTrippedError, match="3 failed logins in a row"):
        check()
    seen.append(fine)
    check()
