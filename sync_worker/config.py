"""Settings: read once from the environment (and an optional TOML file), then frozen.

Every problem is reported up front as ``errors.ConfigError`` naming the variable,
so a misconfigured worker dies at start-up instead of half-way through a sync.
``VARIABLES`` is the single description of every variable: ``--help`` and the
README table are generated from it so they cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from sync_worker import auth, errors, models, retry, secret, urls

LogFormat = Literal["auto", "json", "console"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Also the default of sync.sync_account for callers without settings.
DEFAULT_MAX_BLOCKS_PER_RUN: Final = 10_000
# Upper bounds of the schedule's durations: beyond them a due time or a lease, added to the
# database's now(), leaves the timestamp range, and every claim statement would fail.
MAX_INTERVAL_SECONDS: Final = 604_800.0
MAX_JITTER_SECONDS: Final = 86_400.0
MAX_CLAIM_LEASE_SECONDS: Final = 3_600.0
# A callback password travels in every callback body: one this short could not be told from
# ordinary words by the log scrubber, nor resist guessing for long.
MIN_CALLBACK_PASSWORD_LENGTH: Final = 16


Reader = Callable[[Mapping[str, str]], object]
# The receiver is reached by the TLS terminator from outside its container or host.
_ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104


@dataclasses.dataclass(frozen=True, slots=True)
class Variable:
    """One documented environment variable: its doc, its typed default, and how it is read.

    ``value`` is the default the ``Settings`` field gets (the dataclass reads it from here);
    ``default`` is how ``--help`` and the README show it; ``read`` parses the variable for
    its single field (None: ``load`` reads it with others, e.g. a secret and its file).
    """

    name: str
    default: str
    description: str
    fields: tuple[str, ...]
    value: object = None
    read: Reader | None = None


def _number(
    name: str,
    value: float,
    description: str,
    field: str,
    *,
    minimum: float,
    maximum: int | None = None,
    at_most: float = math.inf,
) -> Variable:
    """A float (``minimum``..``at_most``), or a whole number when ``maximum`` is given (then
    ``minimum``..``maximum``)."""

    def read(env: Mapping[str, str]) -> object:
        if maximum is not None:
            return _int(env, name, int(value), int(minimum), maximum)
        return _float(env, name, float(value), minimum=minimum, maximum=at_most)

    return Variable(name, f"{value:g}", description, (field,), value, read)


def _choice_variable(
    name: str, value: str, description: str, field: str, choices: Sequence[str], *, upper: bool
) -> Variable:
    return Variable(
        name, value, description, (field,), value, lambda env: _choice(env, name, value, choices, upper=upper)
    )


VARIABLES: Final[tuple[Variable, ...]] = (
    Variable(
        "SYNC_DATABASE_URL",
        "(libpq PG* variables)",
        "Postgres connection string (URL or key=value). Empty: libpq's PGHOST, PGUSER, PGPASSWORD, "
        "PGDATABASE... are used. Or SYNC_DATABASE_URL_FILE: a file holding it.",
        ("database_url",),
        "",
        lambda env: _database_url(_database_url_value(env)),
    ),
    Variable(
        "SYNC_DATABASE_URL_FILE",
        "",
        "Path of a file holding the connection string, password included (one trailing newline is "
        "stripped), e.g. a Kubernetes or Docker secret. Read once at start-up.",
        ("database_url",),
    ),
    Variable(
        "THINGSPACE_BASE_URL",
        urls.DEFAULT_BASE_URL,
        "ThingSpace API base URL. Must be https:// (http:// only with THINGSPACE_ALLOW_INSECURE_LOOPBACK).",
        ("base_url",),
        urls.DEFAULT_BASE_URL,
    ),
    Variable(
        "THINGSPACE_CLIENT_ID",
        "(required)",
        "OAuth client id (the API key).",
        ("client_id",),
        "",
        lambda env: _get(env, "THINGSPACE_CLIENT_ID"),
    ),
    Variable(
        "THINGSPACE_CLIENT_SECRET",
        "(required)",
        "OAuth client secret. Or THINGSPACE_CLIENT_SECRET_FILE: a file holding it.",
        ("client_secret",),
    ),
    Variable(
        "THINGSPACE_CLIENT_SECRET_FILE",
        "",
        "Path of a file holding the client secret (one trailing newline is stripped). Read again at "
        "each token request, so a daemon uses a corrected file without a restart.",
        ("client_secret", "client_secret_file"),
    ),
    Variable(
        "THINGSPACE_USERNAME",
        "(required)",
        "ThingSpace user for the M2M session login.",
        ("username",),
        "",
        lambda env: _get(env, "THINGSPACE_USERNAME"),
    ),
    Variable(
        "THINGSPACE_PASSWORD",
        "(required)",
        "ThingSpace user password. Or THINGSPACE_PASSWORD_FILE: a file holding it.",
        ("password",),
    ),
    Variable(
        "THINGSPACE_PASSWORD_FILE",
        "",
        "Path of a file holding the password (one trailing newline is stripped). Read again at each "
        "login, so a daemon uses a corrected file without a restart.",
        ("password", "password_file"),
    ),
    Variable(
        "SYNC_ACCOUNTS",
        "(required for run/once)",
        "Comma-separated ThingSpace account names to sync (3-32 of A-Z a-z 0-9 -). Unset: the "
        '[accounts."NAME"] tables of the --config file.',
        ("accounts",),
    ),
    _number(
        "SYNC_INTERVAL_SECONDS",
        300,
        "Seconds between syncs of an account (daemon), 1-604800 (a week). Per account: interval_seconds "
        'in [accounts."NAME"].',
        "interval_seconds",
        minimum=1.0,
        at_most=MAX_INTERVAL_SECONDS,
    ),
    _number(
        "SYNC_JITTER_SECONDS",
        30,
        "Random delay of up to this many seconds added to each scheduled sync (spreads accounts out), "
        "0-86400 (a day).",
        "jitter_seconds",
        minimum=0.0,
        at_most=MAX_JITTER_SECONDS,
    ),
    _number(
        "SYNC_CONCURRENCY",
        4,
        "Accounts synced at the same time (1-64).",
        "concurrency",
        minimum=1,
        maximum=64,
    ),
    Variable(
        "SYNC_RUN_BUDGET_SECONDS",
        "(the interval)",
        "Time budget of one account run. Reached between two blocks after the run stored some, the "
        "run ends cleanly: outcome succeeded with the note 'run budget reached, more waiting' (the "
        "cursor is committed; the daemon makes the account due again at once). A retry wait beyond "
        "it ends the run (failed, deferred), and an API call in flight when it ends is cut (the run "
        "fails); either way the next run resumes at the stored cursor. The daemon's /healthz fails "
        "while a run is past it by twice THINGSPACE_TOTAL_TIMEOUT + 60 s.",
        ("run_budget_seconds",),
        300.0,
    ),
    _number(
        "SYNC_MAX_BLOCKS_PER_RUN",
        DEFAULT_MAX_BLOCKS_PER_RUN,
        "Blocks one account run may page through before it ends with an error (a paging loop guard; "
        "the next run resumes at the stored cursor).",
        "max_blocks_per_run",
        minimum=1,
        maximum=10_000_000,
    ),
    _number(
        "SYNC_SHUTDOWN_TIMEOUT_SECONDS",
        30,
        "On SIGTERM/SIGINT, how long in-flight blocks may take to commit before the process exits.",
        "shutdown_timeout_seconds",
        minimum=0.0,
    ),
    _number(
        "SYNC_CLAIM_LEASE_SECONDS",
        60,
        "Daemon replicas share the accounts through claims in Postgres; a claim the holder stops "
        "renewing (it died or lost the database) is taken over after this many seconds, 1-3600.",
        "claim_lease_seconds",
        minimum=1.0,
        at_most=MAX_CLAIM_LEASE_SECONDS,
    ),
    _number(
        "SYNC_LOGIN_GUARD_THRESHOLD",
        3,
        "Failed logins in a row of the ThingSpace user (counted in Postgres across processes, "
        "unknown outcomes included) after which the same credentials are not tried again "
        f"(1-{auth.CEILING}). New credentials may go on up to {auth.CEILING}, never to the vendor's "
        f"lock at {auth.VENDOR_LOCKOUT_AT}.",
        "login_guard_threshold",
        minimum=1,
        maximum=auth.CEILING,
    ),
    Variable(
        "SYNC_RETENTION_DAYS",
        "(unset: keep everything)",
        "History older than this many days and older finished sync_run rows are removed by "
        "`sync-worker retention --apply`, and once a day by the daemon. A message goes only when both its "
        "timestamp and the time it was stored are older (a message stored today stays this many days, "
        "whatever its timestamp); undated messages by when they were stored. Whole months are dropped, so "
        "up to a month more is kept.",
        ("retention_days",),
        None,
        lambda env: _optional_int(env, "SYNC_RETENTION_DAYS", 1, 36_500),
    ),
    Variable(
        "SYNC_METRICS_PORT",
        "(unset: off)",
        "Port of the Prometheus /metrics, /healthz and /readyz server (daemon).",
        ("metrics_port",),
        None,
        lambda env: _optional_int(env, "SYNC_METRICS_PORT", 0, 65535),
    ),
    Variable(
        "SYNC_METRICS_TEXTFILE",
        "(unset: off)",
        "once: after each pass, write its metrics to this file for node_exporter's textfile "
        "collector (atomically; the name must end in .prom), e.g. "
        "/var/lib/node_exporter/textfile/thingspace-sms-sync.prom.",
        ("metrics_textfile",),
        None,
        lambda env: _textfile(env, "SYNC_METRICS_TEXTFILE"),
    ),
    Variable(
        "SYNC_METRICS_PUSHGATEWAY",
        "(unset: off)",
        "once: after each pass, push its metrics to this Prometheus Pushgateway (http(s)://host:port; "
        "job thingspace-sms-sync-once, instance = host name), replacing the previous pass's.",
        ("metrics_pushgateway",),
        None,
        lambda env: _pushgateway(env, "SYNC_METRICS_PUSHGATEWAY"),
    ),
    _choice_variable(
        "SYNC_LOG_FORMAT",
        "auto",
        "auto (JSON unless the log stream is a terminal), json or console. Logs go to stderr (a "
        "command's stdout is its data), the daemon's (`run`) to stdout.",
        "log_format",
        LOG_FORMATS,
        upper=False,
    ),
    _choice_variable(
        "SYNC_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        "log_level",
        LOG_LEVELS,
        upper=True,
    ),
    _number(
        "THINGSPACE_CONNECT_TIMEOUT", 5, "HTTP connect timeout, seconds.", "http_connect_timeout", minimum=0.1
    ),
    _number(
        "THINGSPACE_READ_TIMEOUT",
        60,
        "HTTP read timeout, seconds: the longest wait for each piece of an answer.",
        "http_read_timeout",
        minimum=0.1,
    ),
    _number(
        "THINGSPACE_TOTAL_TIMEOUT",
        120,
        "The longest one HTTP exchange may take, seconds: connect, headers and body together (an "
        "answer trickling in slowly is cut here; the read timeout only bounds each wait). An API "
        "call is also cut where the run budget ends; a token request or login never is.",
        "http_total_timeout",
        minimum=1.0,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_ATTEMPTS",
        retry.DEFAULT_MAX_ATTEMPTS,
        "Attempts per API call for transient errors (GET/PUT only; a send is never retried).",
        "retry_max_attempts",
        minimum=1,
        maximum=20,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_WAIT",
        retry.DEFAULT_MAX_BACKOFF,
        "Longest backoff between two attempts, seconds.",
        "retry_max_wait_seconds",
        minimum=0.0,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_RETRY_AFTER",
        retry.DEFAULT_MAX_RETRY_AFTER,
        "Longest Retry-After the worker sleeps through; a longer one ends the run.",
        "retry_max_retry_after_seconds",
        minimum=0.0,
    ),
    Variable(
        "SYNC_CALLBACK_URL",
        "(required for callbacks register)",
        "Public https:// address of the callback receiver as ThingSpace reaches it through the TLS "
        "terminator (e.g. https://sms-callbacks.example.com); an account's listener URL is this + "
        "/callbacks/ACCOUNT.",
        ("callback_url",),
        "",
        lambda env: _get(env, "SYNC_CALLBACK_URL").rstrip("/"),
    ),
    Variable(
        "SYNC_CALLBACK_USERNAME",
        "(required for receive/callbacks)",
        "Username ThingSpace puts in every callback body (registered with the listener; 1-40 characters).",
        ("callback_username",),
        "",
        lambda env: _get(env, "SYNC_CALLBACK_USERNAME"),
    ),
    Variable(
        "SYNC_CALLBACK_PASSWORD",
        "(required for receive/callbacks)",
        "Password ThingSpace puts in every callback body (16-40 characters: a long random one). Or "
        "SYNC_CALLBACK_PASSWORD_FILE.",
        ("callback_password",),
    ),
    Variable(
        "SYNC_CALLBACK_PASSWORD_FILE",
        "",
        "Path of a file holding the callback password (one trailing newline is stripped).",
        ("callback_password",),
    ),
    Variable(
        "SYNC_CALLBACK_PREVIOUS_PASSWORD",
        "",
        "During a password rotation, the old callback password, still accepted by the receiver. Or "
        "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE. Unset it once the new one is registered.",
        ("callback_previous_password",),
    ),
    Variable(
        "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE",
        "",
        "Path of a file holding the previous callback password.",
        ("callback_previous_password",),
    ),
    Variable(
        "SYNC_CALLBACK_HOST",
        _ALL_INTERFACES,
        "Address the callback receiver listens on (plain HTTP: put it behind a TLS terminator).",
        ("callback_host",),
        _ALL_INTERFACES,
        lambda env: _get(env, "SYNC_CALLBACK_HOST") or _ALL_INTERFACES,
    ),
    _number(
        "SYNC_CALLBACK_PORT",
        9080,
        "Port of the callback receiver (sync-worker receive).",
        "callback_port",
        minimum=0,
        maximum=65535,
    ),
    _number(
        "SYNC_CALLBACK_MAX_BODY_BYTES",
        65536,
        "Largest callback body accepted; a longer one is refused with 413 (one declared longer than twice "
        "this before it is read).",
        "callback_max_body_bytes",
        minimum=1024,
        maximum=16 * 1024 * 1024,
    ),
    Variable(
        "SYNC_CALLBACK_ALLOWED_SOURCES",
        "(any)",
        "Comma-separated addresses or CIDR networks callbacks may come from (ThingSpace's published "
        "callback addresses); others get 403. Empty: any source.",
        ("callback_allowed_sources",),
        (),
        lambda env: _networks(env, "SYNC_CALLBACK_ALLOWED_SOURCES"),
    ),
    Variable(
        "SYNC_CALLBACK_TRUSTED_PROXIES",
        "(none)",
        "Comma-separated addresses or CIDR networks of the TLS terminator(s): only from them is "
        "X-Forwarded-For believed when checking SYNC_CALLBACK_ALLOWED_SOURCES.",
        ("callback_trusted_proxies",),
        (),
        lambda env: _networks(env, "SYNC_CALLBACK_TRUSTED_PROXIES"),
    ),
    Variable(
        "THINGSPACE_ALLOW_INSECURE_LOOPBACK",
        "0",
        "1: allow plain http:// to a loopback host (the simulator). Refused for any other host.",
        ("allow_insecure_loopback",),
        False,
        lambda env: _bool(env, "THINGSPACE_ALLOW_INSECURE_LOOPBACK"),
    ),
)
_BY_NAME: Final = {var.name: var for var in VARIABLES}

# Which commands read each variable (``COMMAND --help`` lists only those; ``sync-worker --help`` all).
# Every command that loads the settings validates every variable, but only these change what it does.
# A command is named as typed: "once", "cursor reset". A test checks each command's help against this.
_LOGS: Final = frozenset({"SYNC_LOG_FORMAT", "SYNC_LOG_LEVEL"})
_DATABASE: Final = frozenset({"SYNC_DATABASE_URL", "SYNC_DATABASE_URL_FILE"})
# The login guard (kept in Postgres, per user): its threshold, and a login's lease from the total timeout.
_GUARD: Final = frozenset({"THINGSPACE_USERNAME", "SYNC_LOGIN_GUARD_THRESHOLD", "THINGSPACE_TOTAL_TIMEOUT"})
# What a login is made of (the guard tells credentials apart by their fingerprint).
_CREDENTIALS: Final = _GUARD | {
    "THINGSPACE_BASE_URL",
    "THINGSPACE_CLIENT_ID",
    "THINGSPACE_CLIENT_SECRET",
    "THINGSPACE_CLIENT_SECRET_FILE",
    "THINGSPACE_PASSWORD",
    "THINGSPACE_PASSWORD_FILE",
    "THINGSPACE_ALLOW_INSECURE_LOOPBACK",
}
_API: Final = _CREDENTIALS | {
    "THINGSPACE_CONNECT_TIMEOUT",
    "THINGSPACE_READ_TIMEOUT",
    "THINGSPACE_RETRY_MAX_ATTEMPTS",
    "THINGSPACE_RETRY_MAX_WAIT",
    "THINGSPACE_RETRY_MAX_RETRY_AFTER",
}
_SYNC: Final = _API | {
    "SYNC_ACCOUNTS",
    "SYNC_INTERVAL_SECONDS",
    "SYNC_CONCURRENCY",
    "SYNC_RUN_BUDGET_SECONDS",
    "SYNC_MAX_BLOCKS_PER_RUN",
}
_RECEIVER: Final = frozenset(
    {
        "SYNC_ACCOUNTS",
        "SYNC_METRICS_PORT",
        "SYNC_CALLBACK_USERNAME",
        "SYNC_CALLBACK_PASSWORD",
        "SYNC_CALLBACK_PASSWORD_FILE",
        "SYNC_CALLBACK_PREVIOUS_PASSWORD",
        "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE",
        "SYNC_CALLBACK_HOST",
        "SYNC_CALLBACK_PORT",
        "SYNC_CALLBACK_MAX_BODY_BYTES",
        "SYNC_CALLBACK_ALLOWED_SOURCES",
        "SYNC_CALLBACK_TRUSTED_PROXIES",
    }
)
_CONFIGURED: Final = frozenset({"SYNC_ACCOUNTS"})  # "configured or known to the database"
COMMAND_VARIABLES: Final[Mapping[str, frozenset[str]]] = {
    "migrate": _LOGS | _DATABASE,
    "run": _LOGS
    | _DATABASE
    | _SYNC
    | {
        "SYNC_JITTER_SECONDS",
        "SYNC_SHUTDOWN_TIMEOUT_SECONDS",
        "SYNC_CLAIM_LEASE_SECONDS",
        "SYNC_RETENTION_DAYS",
        "SYNC_METRICS_PORT",
    },
    "once": _LOGS | _DATABASE | _SYNC | {"SYNC_METRICS_TEXTFILE", "SYNC_METRICS_PUSHGATEWAY"},
    "status": _LOGS | _DATABASE | _CREDENTIALS | _CONFIGURED,
    "retention": _LOGS | _DATABASE | {"SYNC_RETENTION_DAYS"},
    "cursor show": _LOGS | _DATABASE | _CONFIGURED,
    "cursor reset": _LOGS | _DATABASE | _CONFIGURED,
    "accounts list": _LOGS | _DATABASE | _CONFIGURED,
    "accounts forget": _LOGS | _DATABASE | _CONFIGURED,
    "auth status": _LOGS | _DATABASE | _CREDENTIALS,
    "auth reset": _LOGS | _DATABASE | _GUARD,
    "quarantine list": _LOGS | _DATABASE,
    "quarantine show": _LOGS | _DATABASE,
    "quarantine replay": _LOGS | _DATABASE,
    "send": _LOGS | _DATABASE | _API,
    "start-delivery": _LOGS | _DATABASE | _API,
    "callbacks list": _LOGS | _DATABASE | _API,
    "callbacks register": _LOGS
    | _DATABASE
    | _API
    | {
        "SYNC_CALLBACK_URL",
        "SYNC_CALLBACK_USERNAME",
        "SYNC_CALLBACK_PASSWORD",
        "SYNC_CALLBACK_PASSWORD_FILE",
    },
    "callbacks remove": _LOGS | _DATABASE | _API | {"SYNC_CALLBACK_URL"},
    "callbacks kept": _LOGS | _DATABASE,
    "receive": _LOGS | _DATABASE | _RECEIVER,
    # The login and head blocks as `once` makes them (within one run budget), then the callback URL.
    "doctor": _LOGS | _DATABASE | _API | {"SYNC_ACCOUNTS", "SYNC_RUN_BUDGET_SECONDS", "SYNC_CALLBACK_URL"},
    # The simulator and the demo bring their own settings; `simulate` only formats its logs.
    "simulate": frozenset({"SYNC_LOG_FORMAT"}),
    "demo": frozenset(),
}


def variables_of(command: str) -> tuple[Variable, ...]:
    """The variables ``command`` reads, in ``VARIABLES`` order (every one for an unlisted command)."""
    names = COMMAND_VARIABLES.get(command)
    return tuple(var for var in VARIABLES if names is None or var.name in names)


def _default(name: str) -> Any:
    """The typed default of variable ``name``: what the ``Settings`` field starts from."""
    return _BY_NAME[name].value


def variables_markdown() -> str:
    """The README table of every variable (a test keeps the README equal to it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default and not var.default.startswith("(") else var.default
        lines.append(f"| `{var.name}` | {default or '-'} | {var.description.replace('|', '/')} |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class AccountSettings:
    name: str
    interval_seconds: float
    jitter_seconds: float


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the worker is configured with. Build it with ``load()``."""

    # repr=False: a URL may embed the database password.
    database_url: str = dataclasses.field(repr=False)
    base_url: str
    client_id: str
    client_secret: secret.Secret
    username: str
    password: secret.Secret
    accounts: tuple[AccountSettings, ...]
    interval_seconds: float = dataclasses.field(default=_default("SYNC_INTERVAL_SECONDS"))
    jitter_seconds: float = dataclasses.field(default=_default("SYNC_JITTER_SECONDS"))
    concurrency: int = dataclasses.field(default=_default("SYNC_CONCURRENCY"))
    run_budget_seconds: float = dataclasses.field(default=_default("SYNC_RUN_BUDGET_SECONDS"))
    max_blocks_per_run: int = dataclasses.field(default=_default("SYNC_MAX_BLOCKS_PER_RUN"))
    shutdown_timeout_seconds: float = dataclasses.field(default=_default("SYNC_SHUTDOWN_TIMEOUT_SECONDS"))
    claim_lease_seconds: float = dataclasses.field(default=_default("SYNC_CLAIM_LEASE_SECONDS"))
    login_guard_threshold: int = dataclasses.field(default=_default("SYNC_LOGIN_GUARD_THRESHOLD"))
    retention_days: int | None = dataclasses.field(default=_default("SYNC_RETENTION_DAYS"))
    metrics_port: int | None = dataclasses.field(default=_default("SYNC_METRICS_PORT"))
    metrics_textfile: str | None = dataclasses.field(default=_default("SYNC_METRICS_TEXTFILE"))
    metrics_pushgateway: str | None = dataclasses.field(default=_default("SYNC_METRICS_PUSHGATEWAY"))
    log_format: LogFormat = dataclasses.field(default=_default("SYNC_LOG_FORMAT"))
    log_level: str = dataclasses.field(default=_default("SYNC_LOG_LEVEL"))
    http_connect_timeout: float = dataclasses.field(default=_default("THINGSPACE_CONNECT_TIMEOUT"))
    http_read_timeout: float = dataclasses.field(default=_default("THINGSPACE_READ_TIMEOUT"))
    http_total_timeout: float = dataclasses.field(default=_default("THINGSPACE_TOTAL_TIMEOUT"))
    retry_max_attempts: int = dataclasses.field(default=_default("THINGSPACE_RETRY_MAX_ATTEMPTS"))
    retry_max_wait_seconds: float = dataclasses.field(default=_default("THINGSPACE_RETRY_MAX_WAIT"))
    retry_max_retry_after_seconds: float = dataclasses.field(
        default=_default("THINGSPACE_RETRY_MAX_RETRY_AFTER")
    )
    allow_insecure_loopback: bool = dataclasses.field(default=_default("THINGSPACE_ALLOW_INSECURE_LOOPBACK"))
    # Re-read at every login, so a daemon picks up a corrected secret without a restart.
    client_secret_file: Path | None = None
    password_file: Path | None = None
    callback_url: str = dataclasses.field(default=_default("SYNC_CALLBACK_URL"))
    callback_username: str = dataclasses.field(default=_default("SYNC_CALLBACK_USERNAME"))
    callback_password: secret.Secret = dataclasses.field(default_factory=lambda: secret.Secret(""))
    callback_previous_password: secret.Secret | None = None
    callback_host: str = dataclasses.field(default=_default("SYNC_CALLBACK_HOST"))
    callback_port: int = dataclasses.field(default=_default("SYNC_CALLBACK_PORT"))
    callback_max_body_bytes: int = dataclasses.field(default=_default("SYNC_CALLBACK_MAX_BODY_BYTES"))
    callback_allowed_sources: tuple[Network, ...] = dataclasses.field(
        default=_default("SYNC_CALLBACK_ALLOWED_SOURCES")
    )
    callback_trusted_proxies: tuple[Network, ...] = dataclasses.field(
        default=_default("SYNC_CALLBACK_TRUSTED_PROXIES")
    )

    @property
    def account_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.accounts)

    def redacted_database_url(self) -> str:
        return redact_conninfo(self.database_url)

    def credentials(self) -> auth.Credentials:
        """The login material as it is now: the ``*_FILE`` secrets are read again each time."""
        client_secret = self.client_secret
        password = self.password
        if self.client_secret_file is not None:
            client_secret = read_secret_file("THINGSPACE_CLIENT_SECRET_FILE", self.client_secret_file)
        if self.password_file is not None:
            password = read_secret_file("THINGSPACE_PASSWORD_FILE", self.password_file)
        return auth.Credentials(self.client_id, client_secret, self.username, password)


# --- loading ---------------------------------------------------------------


def load(
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    *,
    require_credentials: bool = True,
    require_accounts: bool = True,
) -> Settings:
    """Read and validate the settings; raise ``errors.ConfigError`` naming the variable.

    ``require_credentials``/``require_accounts`` let commands that never call the
    API (``migrate``, ``status``, ``cursor``) run without ThingSpace credentials.
    """
    env = os.environ if env is None else env
    file_accounts = _read_config_file(config_file) if config_file is not None else {}

    # Every variable with a reader of its own, each into its one field.
    values: dict[str, Any] = {var.fields[0]: var.read(env) for var in VARIABLES if var.read is not None}
    insecure = bool(values["allow_insecure_loopback"])
    values["base_url"] = urls.check_base_url(
        _get(env, "THINGSPACE_BASE_URL") or urls.DEFAULT_BASE_URL, allow_insecure_loopback=insecure
    )
    interval = float(values["interval_seconds"])
    values["run_budget_seconds"] = _float(env, "SYNC_RUN_BUDGET_SECONDS", interval, minimum=1.0)
    values.update(_callback_settings(env, str(values["callback_url"]), str(values["callback_username"])))
    client_id, username = str(values["client_id"]), str(values["username"])
    client_secret = _secret(env, "THINGSPACE_CLIENT_SECRET")
    password = _secret(env, "THINGSPACE_PASSWORD")
    if require_credentials:
        for name, value in (
            ("THINGSPACE_CLIENT_ID", client_id),
            ("THINGSPACE_CLIENT_SECRET", client_secret),
            ("THINGSPACE_USERNAME", username),
            ("THINGSPACE_PASSWORD", password),
        ):
            if not value:
                hint = f" (or {name}_FILE)" if name.endswith(("SECRET", "PASSWORD")) else ""
                raise errors.ConfigError(f"{name}{hint} is required but not set")

    accounts = _accounts(env, file_accounts, interval, float(values["jitter_seconds"]))
    if require_accounts and not accounts:
        raise errors.ConfigError(
            'SYNC_ACCOUNTS is required: a comma-separated list of account names (or [accounts."NAME"] '
            "tables in the --config file)"
        )

    return Settings(
        **values,
        client_secret=client_secret,
        password=password,
        accounts=accounts,
        client_secret_file=_path(env, "THINGSPACE_CLIENT_SECRET_FILE"),
        password_file=_path(env, "THINGSPACE_PASSWORD_FILE"),
    )


def _callback_settings(env: Mapping[str, str], url: str, username: str) -> dict[str, Any]:
    """The receiver's secrets, checked against the vendor's 40-character limit and our 16-character floor."""
    if url:
        urls.check_base_url(
            url,
            allow_insecure_loopback=_bool(env, "THINGSPACE_ALLOW_INSECURE_LOOPBACK"),
            name="SYNC_CALLBACK_URL",
        )
    if len(username) > models.MAX_CALLBACK_CREDENTIAL_LENGTH:
        raise errors.ConfigError(
            f"SYNC_CALLBACK_USERNAME is longer than {models.MAX_CALLBACK_CREDENTIAL_LENGTH} characters"
        )
    password = _secret(env, "SYNC_CALLBACK_PASSWORD")
    previous = _secret(env, "SYNC_CALLBACK_PREVIOUS_PASSWORD")
    for base, value in (("SYNC_CALLBACK_PASSWORD", password), ("SYNC_CALLBACK_PREVIOUS_PASSWORD", previous)):
        # The variable the value came from: the file's when that is the one set.
        name = f"{base}_FILE" if env.get(f"{base}_FILE", "").strip() else base
        length = len(value.reveal())
        if length > models.MAX_CALLBACK_CREDENTIAL_LENGTH:
            raise errors.ConfigError(
                f"{name} is longer than {models.MAX_CALLBACK_CREDENTIAL_LENGTH} characters"
            )
        if 0 < length < MIN_CALLBACK_PASSWORD_LENGTH:
            raise errors.ConfigError(
                f"{name} is shorter than {MIN_CALLBACK_PASSWORD_LENGTH} characters: a password that short "
                "cannot be told from ordinary text in logs (so it cannot be scrubbed) and is soon guessed; "
                "use a random one, e.g. openssl rand -base64 24 (then register it: sync-worker callbacks "
                "register --replace)"
            )
    return {"callback_password": password, "callback_previous_password": previous or None}


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    found: list[Network] = []
    for item in _get(env, name).split(","):
        text = item.strip()
        if not text:
            continue
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise errors.ConfigError(f"{name}: {text!r} is not an IP address or CIDR network") from None
    return tuple(found)


def _textfile(env: Mapping[str, str], name: str) -> str | None:
    raw = _get(env, name)
    if not raw:
        return None
    if not raw.endswith(".prom"):
        raise errors.ConfigError(f"{name}={raw!r} must end in .prom (node_exporter reads only *.prom)")
    if not Path(raw).parent.is_dir():
        raise errors.ConfigError(f"{name}={raw!r}: the directory {str(Path(raw).parent)!r} does not exist")
    return raw


def _pushgateway(env: Mapping[str, str], name: str) -> str | None:
    raw = _get(env, name)
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise errors.ConfigError(f"{name} must be an http(s)://host:port URL without credentials")
    return raw


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = _get(env, name)
    return Path(raw) if raw else None


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _float(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float = math.inf
) -> float:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise errors.ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise errors.ConfigError(f"{name}={raw!r} must be a finite number >= {minimum:g}")
    if value > maximum:
        raise errors.ConfigError(f"{name}={raw!r} must be at most {maximum:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _optional_int(env, name, low, high)
    return default if value is None else value


def _optional_int(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = _get(env, name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise errors.ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise errors.ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str], *, upper: bool) -> str:
    raw = _get(env, name)
    if not raw:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise errors.ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = _get(env, name).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise errors.ConfigError(f"{name}={raw!r} must be 1 or 0")


def _secret(env: Mapping[str, str], name: str) -> secret.Secret:
    file_name = f"{name}_FILE"
    # Not stripped: a secret may legitimately start or end with spaces.
    value = env.get(name, "")
    path = env.get(file_name, "").strip()
    if value and path:
        raise errors.ConfigError(f"set {name} or {file_name}, not both")
    if path:
        return read_secret_file(file_name, Path(path))
    return secret.Secret(value)


def read_secret_file(variable: str, path: Path) -> secret.Secret:
    """The secret in ``path`` (one trailing newline stripped); ``errors.ConfigError`` naming ``variable``."""
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # The path is not secret; the error text of a read failure never holds file content.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise errors.ConfigError(f"{variable}={str(path)!r} cannot be read: {reason}") from None
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise errors.ConfigError(f"{variable}={str(path)!r} is empty")
    return secret.Secret(value)


def validate_account_name(name: str, where: str) -> str:
    # fullmatch: the pattern's '$' would also accept a trailing newline.
    if not models.ACCOUNT_NAME_RE.fullmatch(name):
        # ascii(): a non-ASCII or control character must be visible in the message.
        raise errors.ConfigError(f"{where}: account name {name!a} must be 3-32 of A-Z a-z 0-9 -")
    return name


def _accounts(
    env: Mapping[str, str],
    file_accounts: Mapping[str, Mapping[str, float]],
    interval: float,
    jitter: float,
) -> tuple[AccountSettings, ...]:
    raw = env.get("SYNC_ACCOUNTS", "")
    names: list[str] = []
    if raw.strip():
        for item in raw.split(","):
            name = validate_account_name(item.strip(), "SYNC_ACCOUNTS")
            if name in names:
                raise errors.ConfigError(f"SYNC_ACCOUNTS lists {name!r} twice")
            names.append(name)
        unknown = sorted(set(file_accounts) - set(names))
        if unknown:
            # A table for an account that is not synced is almost always a typo.
            raise errors.ConfigError(
                f"--config: [accounts.{unknown[0]!r}] is not in SYNC_ACCOUNTS ({', '.join(names)})"
            )
    else:
        names = list(file_accounts)
    result = []
    for name in names:
        overrides = file_accounts.get(name, {})
        result.append(
            AccountSettings(
                name=name,
                interval_seconds=overrides.get("interval_seconds", interval),
                jitter_seconds=overrides.get("jitter_seconds", jitter),
            )
        )
    return tuple(result)


# Each per-account key: its lowest and highest value (those of its global variable).
_ACCOUNT_KEYS: Final[Mapping[str, tuple[float, float]]] = {
    "interval_seconds": (1.0, MAX_INTERVAL_SECONDS),
    "jitter_seconds": (0.0, MAX_JITTER_SECONDS),
}


def _read_config_file(path: Path) -> dict[str, dict[str, float]]:
    """The per-account tables of the TOML file: ``[accounts."NAME"]`` with
    ``interval_seconds`` and/or ``jitter_seconds``."""
    where = f"--config {str(path)!r}"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise errors.ConfigError(f"{where} cannot be read: {exc.strerror or type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"{where} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"accounts"})
    if unknown:
        raise errors.ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (only [accounts.NAME])")
    tables = data.get("accounts", {})
    if not isinstance(tables, dict):
        raise errors.ConfigError(f"{where}: 'accounts' must be a table of tables")
    result: dict[str, dict[str, float]] = {}
    for name, table in tables.items():
        validate_account_name(name, where)
        if not isinstance(table, dict):
            raise errors.ConfigError(f"{where}: [accounts.{name!r}] must be a table")
        values: dict[str, float] = {}
        for key, value in table.items():
            key_where = f"{where}: accounts.{name}.{key}"
            if key not in _ACCOUNT_KEYS:
                raise errors.ConfigError(f"{key_where} is not a known setting ({', '.join(_ACCOUNT_KEYS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise errors.ConfigError(f"{key_where} must be a number")
            low, high = _ACCOUNT_KEYS[key]
            if not math.isfinite(value) or not low <= value <= high:
                raise errors.ConfigError(f"{key_where} must be a finite number from {low:g} to {high:g}")
            values[key] = float(value)
        result[name] = values
    return result


# --- the database ----------------------------------------------------------


def _database_url_value(env: Mapping[str, str]) -> str:
    if _get(env, "SYNC_DATABASE_URL_FILE"):
        return _secret(env, "SYNC_DATABASE_URL").reveal().strip()
    return _get(env, "SYNC_DATABASE_URL")


def _database_url(raw: str) -> str:
    if not raw:
        return ""
    import psycopg.conninfo  # noqa: PLC0415  # keeps `--help` from loading libpq

    try:
        params = psycopg.conninfo.conninfo_to_dict(raw)
    except psycopg.Error:
        # The libpq message may quote the string, password included.
        raise errors.ConfigError("SYNC_DATABASE_URL is not a valid libpq connection string or URL") from None
    password = params.get("password")
    if isinstance(password, str):
        secret.register(password)
    return raw


def redact_conninfo(conninfo: str) -> str:
    """``conninfo`` with its password replaced, for messages and status output."""
    if not conninfo:
        return "(libpq PG* variables)"
    import psycopg.conninfo  # noqa: PLC0415  # keeps `--help` from loading libpq

    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparseable connection string)"
    shown = [f"{k}={v}" for k, v in params.items() if k in ("host", "port", "dbname", "user") and v]
    return " ".join(shown) or "(libpq defaults)"
