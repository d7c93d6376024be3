"""The vendor's own Python SDK (PyPI ``sdksio-verizon-apis-sdk==2.0.0``) against the simulator.

The SDK's request builders and deserialisers are the conformance check: if the simulator's paths,
status codes, headers or bodies drift from the real wire format, the SDK fails here.

How the SDK is pointed at the simulator: ``Configuration.get_base_uri`` reads
``self.environments[self.environment][server]``, a class-level table of real ThingSpace hosts. The
test gives one ``Configuration`` instance its own copy of the production table with the host part
replaced by the simulator's base URL (the class table is left alone).

What the SDK cannot do, documented rather than worked around:
* It does not follow ``Location``: ``list_devices_sms_messages`` returns an ``ApiResponse`` whose
  ``headers`` the caller reads to get ``next`` (done here, as the SDK docs describe).
* Its OAuth handler swallows a refused token request (``_get_token_from_provider`` catches
  ``APIException``) and later calls fail locally, so the OAuth error body is checked by calling
  ``oauth_authorization.request_token_thingspace_oauth`` directly.
* It has no session renewal: after ``SessionToken.Expired`` the caller logs in again and builds a
  new client with the new ``VZ-M2M-Token`` credentials.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping
from typing import Any

import pytest

# Imported plainly, not importorskip: the SDK is a pinned dev dependency and this is the only check of
# the simulator's wire format against the vendor's code, so a broken install must fail, not skip.
from verizon import configuration as vz_configuration
from verizon import verizon_client
from verizon.exceptions import (
    connectivity_management_result_exception as vz_cmr_exception,
)
from verizon.exceptions import oauth_provider_exception as vz_oauth_exception
from verizon.http.auth import thingspace_oauth as vz_oauth
from verizon.http.auth import vz_m2m_token as vz_m2m
from verizon.models import device_id as vz_device_id
from verizon.models import log_in_request as vz_log_in_request
from verizon.models import sms_send_request as vz_sms_send_request

from sync_worker import simulator as sim_mod

ACCOUNT = "0252012345-00001"
_REAL_API = "https://thingspace.verizon.com/api"


def _config(sim: sim_mod.Simulator, session_token: str | None) -> Any:
    cfg = vz_configuration.Configuration(
        timeout=10,
        environment=vz_configuration.Environment.PRODUCTION,
        thingspace_oauth_credentials=vz_oauth.ThingspaceOauthCredentials(
            oauth_client_id=sim.config.client_id,
            oauth_client_secret=sim.config.client_secret.reveal(),
        ),
        vz_m2m_token_credentials=(
            vz_m2m.VZM2mTokenCredentials(vz_m2m_token=session_token) if session_token else None
        ),
    )
    production = vz_configuration.Configuration.environments[vz_configuration.Environment.PRODUCTION]
    table = {
        server: url.replace(_REAL_API, sim.base_url)
        for server, url in production.items()
        if url.startswith(_REAL_API)
    }
    cfg.environments = {vz_configuration.Environment.PRODUCTION: table}
    return cfg


def _client(sim: sim_mod.Simulator, session_token: str | None = None) -> Any:
    return verizon_client.VerizonClient(config=_config(sim, session_token))


def _login(sim: sim_mod.Simulator) -> str:
    body = vz_log_in_request.LogInRequest(username=sim.config.username, password=sim.config.password.reveal())
    resp = _client(sim).session_management.start_connectivity_management_session(body)
    assert resp.status_code == 200
    token = resp.body.session_token
    assert isinstance(token, str)
    assert token
    return token


def _next_from(headers: Mapping[str, str]) -> str:
    location = {k.lower(): v for k, v in headers.items()}["location"]
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["next"][0]


def test_sdk_points_at_simulator_not_the_real_host(simulator: sim_mod.Simulator) -> None:
    """The per-instance server table sends every SMS/OAuth call to the simulator, not Verizon."""
    cfg = _config(simulator, None)
    assert cfg.get_base_uri(vz_configuration.Server.THINGSPACE) == simulator.base_url
    assert cfg.get_base_uri(vz_configuration.Server.OAUTH_SERVER) == simulator.base_url + "/ts/v1"
    untouched = vz_configuration.Configuration.environments[vz_configuration.Environment.PRODUCTION]
    assert untouched[vz_configuration.Server.THINGSPACE] == _REAL_API


def test_sdk_full_round_trip_auth_send_paged_history_callbacks(simulator: sim_mod.Simulator) -> None:
    """OAuth + session login, send, 3-block paged history via Location, startCallbacks all deserialise."""
    seeded = simulator.seed(ACCOUNT, 250, seed=11)
    client = _client(simulator, _login(simulator))

    send = client.sms.send_sms_to_device(
        vz_sms_send_request.SMSSendRequest(
            account_name=ACCOUNT,
            sms_message="reboot",
            device_ids=[vz_device_id.DeviceId(id="00123456789012", kind="imei")],
            data_encoding="7-bit",
        )
    )
    assert send.status_code == 200
    assert len(send.body.request_id) == 36
    assert simulator.sent[0]["accountName"] == ACCOUNT
    assert simulator.sent[0]["deviceIds"] == [{"id": "00123456789012", "kind": "imei"}]

    received: list[Any] = []
    statuses: list[int] = []
    next_token: str | None = None
    while True:
        page = client.sms.list_devices_sms_messages(ACCOUNT, next=next_token)
        statuses.append(page.status_code)
        assert page.body.has_more_data is (page.status_code == 202)
        received.extend(page.body.messages)
        if page.status_code == 200:
            break
        next_token = _next_from(page.headers)
    assert statuses == [202, 202, 200]
    assert [m.message for m in received] == [m["message"] for m in seeded]
    assert [m.timestamp for m in received] == [m["timestamp"] for m in seeded]
    assert [[(d.id, d.kind) for d in m.device_ids] for m in received] == [
        [(d["id"], d["kind"]) for d in m["deviceIds"]] for m in seeded
    ]
    assert simulator.acknowledged(ACCOUNT) == seeded
    assert set(simulator.token_acks(ACCOUNT).values()) == {1}

    callbacks = client.sms.start_queued_sms_delivery(ACCOUNT)
    assert callbacks.status_code == 200
    assert callbacks.body.success is True
    assert simulator.stats.token_requests >= 1
    assert simulator.stats.logins == 1


def test_sdk_parses_m2m_errors_session_expired_and_invalid_token(simulator: sim_mod.Simulator) -> None:
    """The SDK turns the simulator's 400 bodies into ConnectivityManagementResultException with codes."""
    simulator.seed(ACCOUNT, 150)
    client = _client(simulator, _login(simulator))
    with pytest.raises(vz_cmr_exception.ConnectivityManagementResultException) as bad_token:
        client.sms.list_devices_sms_messages(ACCOUNT, next="AAAAAAAAAAAAAAAAAAAA")
    assert bad_token.value.error_code == sim_mod.CODE_INVALID_NEXT_TOKEN
    assert bad_token.value.response_code == 400

    simulator.faults.expire_session()
    with pytest.raises(vz_cmr_exception.ConnectivityManagementResultException) as expired:
        client.sms.list_devices_sms_messages(ACCOUNT)
    assert expired.value.error_code == "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired"
    assert expired.value.error_message == "The Session has expired."

    # The SDK has no renewal of its own: log in again and build a client with the new token.
    renewed = _client(simulator, _login(simulator))
    assert renewed.sms.list_devices_sms_messages(ACCOUNT).status_code == 202
    assert simulator.stats.logins == 2


def test_sdk_parses_oauth_error_for_bad_client(simulator: sim_mod.Simulator) -> None:
    """A refused client gets the OAuth error body the SDK's OauthProviderException reads."""
    client = _client(simulator)
    bad_header = "Basic " + base64.b64encode(b"sim-client-id:wrong").decode()
    with pytest.raises(vz_oauth_exception.OauthProviderException) as refused:
        client.oauth_authorization.request_token_thingspace_oauth(bad_header)
    assert refused.value.response_code == 401
    assert refused.value.error == "invalid_client"


def test_sdk_login_with_bad_password_reports_invalid_credentials(simulator: sim_mod.Simulator) -> None:
    """A wrong password comes back as a 400 the SDK parses, with the InvalidCredentials code."""
    body = vz_log_in_request.LogInRequest(username=simulator.config.username, password="wrong-password")
    with pytest.raises(vz_cmr_exception.ConnectivityManagementResultException) as refused:
        _client(simulator).session_management.start_connectivity_management_session(body)
    assert refused.value.error_code == sim_mod.CODE_INVALID_CREDENTIALS
    assert simulator.stats.failed_logins == 1
