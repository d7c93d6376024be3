"""The receiver as a plain WSGI application, called in-process (no server, no database)."""

from __future__ import annotations

import io
import json
import wsgiref.util
from typing import Any

import prometheus_client

from sync_worker import callback_metrics, callbacks, db, receiver, secret

ACCOUNT = "0252012345-00001"
PASSWORD = "a-listener-password-of-some-length"  # a test value


def no_database() -> db.Connection:
    raise AssertionError("a refused request must not reach the database")


def make() -> receiver.Receiver:
    config = receiver.ReceiverConfig(
        accounts=frozenset({ACCOUNT}),
        credentials=callbacks.ListenerCredentials("listener", secret.Secret(PASSWORD)),
    )
    return receiver.Receiver(
        config, no_database, callback_metrics.CallbackMetrics(prometheus_client.CollectorRegistry())
    )


def call(app: receiver.Receiver, body: bytes, **environ: Any) -> tuple[str, dict[str, str], Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/callbacks/{ACCOUNT}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "192.0.2.7",
        "wsgi.input": io.BytesIO(body),
        **environ,
    }
    wsgiref.util.setup_testing_defaults(env)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    payload = b"".join(app.wsgi(env, start_response))
    assert seen["headers"]["Content-Length"] == str(len(payload))
    return seen["status"], seen["headers"], json.loads(payload)


def test_the_wsgi_application_refuses_bad_credentials_without_a_server_or_database() -> None:
    """Called in-process, a callback with the wrong password is answered 403 refused, JSON, no-store."""
    body = json.dumps({"username": "listener", "password": "wrong-password-000000", "message": "x"}).encode()
    status, headers, answer = call(make(), body)
    assert (status, answer) == ("403 Forbidden", {"status": "refused"})
    assert (headers["Content-Type"], headers["Cache-Control"]) == ("application/json", "no-store")


def test_the_wsgi_application_reads_every_refusal_from_the_environ() -> None:
    """Route, length and media type come from the WSGI environ: 404, 411 and 415 as documented."""
    app = make()
    assert call(app, b"{}", PATH_INFO="/elsewhere")[0] == "404 Not Found"
    assert call(app, b"", CONTENT_LENGTH="")[0] == "411 Length Required"
    assert call(app, b"{}", CONTENT_TYPE="text/plain")[0] == "415 Unsupported Media Type"
