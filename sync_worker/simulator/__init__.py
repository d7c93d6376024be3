"""A local stand-in for ThingSpace over real HTTP (tests, the demo, the benchmarks).

Paths, status codes, headers and body shapes follow ``docs`` / the shared API notes:

* ``POST /api/ts/v1/oauth2/token``: Basic ``client_id:client_secret``, form
  ``grant_type=client_credentials`` -> ``{access_token, token_type: "bearer", expires_in: 3600}``.
  Bad client -> 401 ``{"error": "invalid_client", ...}``; other grant -> 400 ``unsupported_grant_type``.
  With ``SimConfig.oauth_same_token_for_hour`` (the vendor's rule) a request during a token's hour
  gets the same token back, ``expires_in`` counting down from its first issue (whole seconds, 0 in
  the last one). ``POST /api/ts/v1/oauth2/revoke`` (Basic client, form ``token``) -> 200 ``{}``: that
  token is refused from then on and the next request gets a new one.
* ``POST /api/m2m/v1/session/login``: bearer, JSON ``{username, password}`` -> ``{sessionToken}``.
  A wrong password -> 400 ``UnifiedWebService.REQUEST_FAILED.InvalidCredentials``. After
  ``SimConfig.max_failed_logins`` (5) consecutive failures the user is locked like on the real
  platform: every later login (even with the right password) -> 400
  ``UnifiedWebService.REQUEST_FAILED.UserLocked`` until ``Simulator.unlock()``.
* ``POST /api/m2m/v1/session/logout``, ``POST /api/m2m/v1/sms`` (validated, recorded in ``sent``,
  -> ``{requestId}``), ``GET /api/m2m/v1/sms/{aname}/history[?next=T]``,
  ``PUT /api/m2m/v1/sms/{aname}/startCallbacks`` -> ``{success: true}`` (push mode when the account has
  an ``EnhancedConnectivityService`` listener), ``POST``/``GET /api/m2m/v1/callbacks/{aname}``,
  ``DELETE /api/m2m/v1/callbacks/{aname}/name/{service}``: listeners and push mode, see ``push``.
* Every M2M call except login needs a valid bearer (else 401 gateway fault ``900901``) and a valid
  ``VZ-M2M-Token`` (else 400 ``UnifiedWebService.REQUEST_FAILED.SessionToken.Expired``). An unknown
  account -> 400 ``UnifiedWebService.REQUEST_FAILED.AccountNotFound``; an invalid send body -> 400
  ``UnifiedWebService.REQUEST_FAILED.InvalidRequest``.

Control and observation (the whole public surface; nothing else is meant to be overridden):

* ``Simulator.faults`` (``Faults``): latency (every request takes that long at the server, its
  own work included: the answer leaves at arrival + latency), random error/timeout/429/unreadable
  rates, one-shot scripts per request kind (statuses, ``"timeout"``, ``"lost_response"``, expiries, ``Raw``,
  ``Mangle``, ``Trickle`` (processed, then answered ``chunk`` bytes every ``gap`` s; ``endless`` for
  ever), ``gateway_error_after_processing()``). ``mangle(kind, status, body, headers)``
  makes an answer unreadable (``UNREADABLE_KINDS``) or well-formed JSON that is still not the block
  (``ENVELOPE_KINDS``: ``messages`` missing or renamed, ``{}``, a duplicate ``messages``, ``hasMoreData``
  missing, not a boolean or disagreeing with the status, a 202 with no message), e.g. from a
  ``hooks.rewrite``.
* ``Simulator.hooks`` (``Hooks``): ``drop`` a request unanswered, ``rewrite`` an answer
  (``Request``, ``Answer``), and be told when a request was ``answered``, a ``final_block`` written
  out, or a bearer/session token ``issued``. Documented in ``hooks``.
* Traffic: ``inject``, ``seed``, ``add_account``, ``requeue(account, n)`` (acknowledged messages
  back to the head: the platform delivering a block again); views ``queued``, ``acknowledged``,
  ``issued_tokens``, ``token_acks``, ``sent``; ``stats`` (``Stats``: counters that can be waited
  on, the request log); auth state ``expire_session``, ``expire_bearer``, ``failed_login_streak``,
  ``unlock``.
* ``Simulator.worker_env(accounts=..., database_url=..., inherit=..., **extra)`` (or
  ``worker_env(base_url, config, ...)`` for a simulator in another process): the environment
  pointing a worker at it.
* Push mode: ``Simulator.push`` (``Pusher``: ``wait_idle``, ``wait_for``, ``lose_answers``, ``counters``)
  and ``Simulator.pushed(account)``; timings and behaviour in ``SimConfig.callback_*``.
* ``serve(...)``: the foreground process behind ``sync-worker simulate`` (``DEFAULT_PORT``).

Modules: ``core`` (``Simulator``: request handling), ``hooks`` (``Hooks``), ``server`` (HTTP layer,
routing), ``auth`` (bearer and session tokens, lock-out), ``history`` (the per-account queue and its
acknowledgement rules, documented there), ``faults`` (``Faults``, ``Raw``), ``counters``
(``Stats``), ``sms`` (send validation), ``traffic`` (``seed_messages``), ``wire`` (codes, bodies,
tokens), ``settings`` (``SimConfig``), ``env`` (``worker_env``), ``standalone`` (``serve``), ``push``
(listeners, push mode and the delivery thread).
Callers use the names below as ``simulator.<Name>``.
"""

from __future__ import annotations

from sync_worker.simulator import (
    core,
    counters,
    env,
    faults,
    hooks,
    push,
    settings,
    standalone,
    traffic,
    wire,
)

Simulator = core.Simulator
SimConfig = settings.SimConfig
FinalAck = settings.FinalAck
TokenMode = settings.TokenMode
CallbackShape = settings.CallbackShape
Pusher = push.Pusher
PushCounters = push.PushCounters
Faults = faults.Faults
Raw = faults.Raw
Mangle = faults.Mangle
Trickle = faults.Trickle
mangle = faults.mangle
UNREADABLE_KINDS = faults.UNREADABLE_KINDS
ENVELOPE_KINDS = faults.ENVELOPE_KINDS
ScriptStep = faults.ScriptStep
gateway_error_after_processing = faults.gateway_error_after_processing
Hooks = hooks.Hooks
Request = hooks.Request
Answer = hooks.Answer
worker_env = env.worker_env
Stats = counters.Stats
RequestRecord = counters.RequestRecord
serve = standalone.serve
DEFAULT_HOST = standalone.DEFAULT_HOST
DEFAULT_PORT = standalone.DEFAULT_PORT
DEFAULT_SEED_MESSAGES = standalone.DEFAULT_SEED_MESSAGES
DEFAULT_ACCOUNTS = standalone.DEFAULT_ACCOUNTS
seed_messages = traffic.seed_messages
MALFORMED_EVERY = traffic.MALFORMED_EVERY
BUSY_DEVICE = traffic.BUSY_DEVICE
new_token = wire.new_token
http_date = wire.http_date
PATH_KINDS = wire.PATH_KINDS
ERR_PREFIX = wire.ERR_PREFIX
CODE_INVALID_CREDENTIALS = wire.CODE_INVALID_CREDENTIALS
CODE_USER_LOCKED = wire.CODE_USER_LOCKED
CODE_SESSION_EXPIRED = wire.CODE_SESSION_EXPIRED
CODE_ACCOUNT_NOT_FOUND = wire.CODE_ACCOUNT_NOT_FOUND
CODE_INVALID_NEXT_TOKEN = wire.CODE_INVALID_NEXT_TOKEN
CODE_INVALID_REQUEST = wire.CODE_INVALID_REQUEST
CODE_UNEXPECTED = wire.CODE_UNEXPECTED

__all__ = [
    "BUSY_DEVICE",
    "CODE_ACCOUNT_NOT_FOUND",
    "CODE_INVALID_CREDENTIALS",
    "CODE_INVALID_NEXT_TOKEN",
    "CODE_INVALID_REQUEST",
    "CODE_SESSION_EXPIRED",
    "CODE_UNEXPECTED",
    "CODE_USER_LOCKED",
    "DEFAULT_ACCOUNTS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SEED_MESSAGES",
    "ENVELOPE_KINDS",
    "ERR_PREFIX",
    "MALFORMED_EVERY",
    "PATH_KINDS",
    "UNREADABLE_KINDS",
    "Answer",
    "CallbackShape",
    "Faults",
    "FinalAck",
    "Hooks",
    "Mangle",
    "PushCounters",
    "Pusher",
    "Raw",
    "Request",
    "RequestRecord",
    "ScriptStep",
    "SimConfig",
    "Simulator",
    "Stats",
    "TokenMode",
    "Trickle",
    "gateway_error_after_processing",
    "http_date",
    "mangle",
    "new_token",
    "seed_messages",
    "serve",
    "worker_env",
]
