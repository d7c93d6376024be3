"""``SimConfig``: the simulator's behaviour switches."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Literal

from sync_worker import secret

FinalAck = Literal["on_delivery", "on_next_get"]
TokenMode = Literal["reusable", "single_use"]
CallbackShape = Literal["envelope", "flat"]


@dataclasses.dataclass
class SimConfig:
    """Behaviour switches; every field may be changed while the simulator runs."""

    block_size: int = 100
    final_ack: FinalAck = "on_delivery"
    token_mode: TokenMode = "reusable"  # noqa: S105 - a mode name, not a password
    # Read once at construction; add accounts later with ``add_account`` or ``inject``.
    accounts: tuple[str, ...] = ("0252012345-00001",)
    client_id: str = "sim-client-id"
    client_secret: secret.Secret = dataclasses.field(
        default_factory=lambda: secret.Secret("sim-client-secret")
    )
    username: str = "sim-user"
    password: secret.Secret = dataclasses.field(default_factory=lambda: secret.Secret("sim-password"))
    max_failed_logins: int = 5
    bearer_ttl: float = 3600.0
    # The vendor's rule: a token request during a token's hour (``bearer_ttl``) gets that same token
    # back, ``expires_in`` counting down from its first issue; only after it expired (or was revoked
    # with ``POST /api/ts/v1/oauth2/revoke``) is a new one issued. Off: every request gets a new token.
    oauth_same_token_for_hour: bool = False
    # The platform drops a session after 20 minutes without use.
    session_idle_timeout: float = 1200.0
    clock: Callable[[], float] = time.monotonic
    host: str = "127.0.0.1"
    port: int = 0
    log_requests: bool = False
    request_log_size: int = 100_000
    # Push mode (``push``): the platform waits minutes between attempts of one callback and
    # tries about four times before the message goes back to the history queue.
    callback_retry_seconds: float = 120.0
    callback_attempts: int = 4
    callback_timeout: float = 10.0
    callback_duplicate_rate: float = 0.0
    callback_reorder: bool = False
    callback_seed: int = 1
    callback_shape: CallbackShape = "envelope"
