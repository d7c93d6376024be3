"""Every environment variable of the worker (``VARIABLES``): its documentation, its typed default,
how it is read, and which commands read it (``COMMAND_VARIABLES``). ``--help`` and the README
table are generated from it, and ``config.Settings`` takes its defaults from it, so none of them
can drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sync_worker import auth, envparse, retry, urls

LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Also the default of sync.sync_account for callers without settings.
DEFAULT_MAX_BLOCKS_PER_RUN: Final = 10_000
# Upper bounds of the schedule's durations: beyond them a due time or a lease, added to the
# database's now(), leaves the timestamp range, and every claim statement would fail.
MAX_INTERVAL_SECONDS: Final = 604_800.0
MAX_JITTER_SECONDS: Final = 86_400.0
MAX_CLAIM_LEASE_SECONDS: Final = 3_600.0


Reader = Callable[[Mapping[str, str]], object]
# The receiver is reached by the TLS terminator from outside its container or host.
_ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104


@dataclasses.dataclass(frozen=True, slots=True)
class Variable:
    """One documented environment variable: its doc, its typed default, and how it is read.

    ``value`` is the default of the ``config.Settings`` field that names this variable first
    (``setting``); ``default`` is how ``--help`` and the README show it; ``read`` parses the
    variable for that field (None: ``config.load`` reads it with others, e.g. a secret and its
    file). Which field a variable feeds is said once, by the field (``sources``).
    """

    name: str
    default: str
    description: str
    value: object = None
    read: Reader | None = None


def _number(
    name: str,
    value: float,
    description: str,
    *,
    minimum: float,
    maximum: int | None = None,
    at_most: float = math.inf,
) -> Variable:
    """A float (``minimum``..``at_most``), or a whole number when ``maximum`` is given (then
    ``minimum``..``maximum``)."""

    def read(env: Mapping[str, str]) -> object:
        if maximum is not None:
            return envparse.whole(env, name, int(value), int(minimum), maximum)
        return envparse.number(env, name, float(value), minimum=minimum, maximum=at_most)

    return Variable(name, f"{value:g}", description, value, read)


def _choice_variable(
    name: str, value: str, description: str, choices: Sequence[str], *, upper: bool
) -> Variable:
    return Variable(
        name,
        value,
        description,
        value,
        lambda env: envparse.choice(env, name, value, choices, upper=upper),
    )


VARIABLES: Final[tuple[Variable, ...]] = (
    Variable(
        "SYNC_DATABASE_URL",
        "(libpq PG* variables)",
        "Postgres connection string (URL or key=value). Empty: libpq's PGHOST, PGUSER, PGPASSWORD, "
        "PGDATABASE... are used. Or SYNC_DATABASE_URL_FILE: a file holding it.",
        "",
    ),
    Variable(
        "SYNC_DATABASE_URL_FILE",
        "",
        "Path of a file holding the connection string, password included (one trailing newline is "
        "stripped), e.g. a Kubernetes or Docker secret. Read once at start-up.",
    ),
    Variable(
        "THINGSPACE_BASE_URL",
        urls.DEFAULT_BASE_URL,
        "ThingSpace API base URL. Must be https:// (http:// only with THINGSPACE_ALLOW_INSECURE_LOOPBACK).",
        urls.DEFAULT_BASE_URL,
    ),
    Variable(
        "THINGSPACE_CLIENT_ID",
        "(required)",
        "OAuth client id (the API key).",
        "",
        lambda env: envparse.stripped(env, "THINGSPACE_CLIENT_ID"),
    ),
    Variable(
        "THINGSPACE_CLIENT_SECRET",
        "(required)",
        "OAuth client secret. Or THINGSPACE_CLIENT_SECRET_FILE: a file holding it.",
    ),
    Variable(
        "THINGSPACE_CLIENT_SECRET_FILE",
        "",
        "Path of a file holding the client secret (one trailing newline is stripped). Read again at "
        "each token request, so a daemon uses a corrected file without a restart.",
    ),
    Variable(
        "THINGSPACE_USERNAME",
        "(required)",
        "ThingSpace user for the M2M session login.",
        "",
        lambda env: envparse.stripped(env, "THINGSPACE_USERNAME"),
    ),
    Variable(
        "THINGSPACE_PASSWORD",
        "(required)",
        "ThingSpace user password. Or THINGSPACE_PASSWORD_FILE: a file holding it.",
    ),
    Variable(
        "THINGSPACE_PASSWORD_FILE",
        "",
        "Path of a file holding the password (one trailing newline is stripped). Read again at each "
        "login, so a daemon uses a corrected file without a restart.",
    ),
    Variable(
        "SYNC_ACCOUNTS",
        "(required for run/receive/once)",
        "Comma-separated ThingSpace account names to sync (3-32 of A-Z a-z 0-9 -). Unset: the "
        '[accounts."NAME"] tables of the --config file. `once --account A` needs neither: it syncs the '
        "accounts it names.",
    ),
    _number(
        "SYNC_INTERVAL_SECONDS",
        300,
        "Seconds between syncs of an account (daemon), 1-604800 (a week). Per account: interval_seconds "
        'in [accounts."NAME"].',
        minimum=1.0,
        at_most=MAX_INTERVAL_SECONDS,
    ),
    _number(
        "SYNC_JITTER_SECONDS",
        30,
        "Random delay of up to this many seconds added to each scheduled sync (spreads accounts out), "
        "0-86400 (a day).",
        minimum=0.0,
        at_most=MAX_JITTER_SECONDS,
    ),
    _number(
        "SYNC_CONCURRENCY",
        4,
        "Accounts synced at the same time (1-64).",
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
        300.0,
    ),
    _number(
        "SYNC_MAX_BLOCKS_PER_RUN",
        DEFAULT_MAX_BLOCKS_PER_RUN,
        "Blocks one account run may page through before it ends with an error (a paging loop guard; "
        "the next run resumes at the stored cursor).",
        minimum=1,
        maximum=10_000_000,
    ),
    _number(
        "SYNC_SHUTDOWN_TIMEOUT_SECONDS",
        30,
        "On SIGTERM/SIGINT, how long in-flight blocks may take to commit before the process exits.",
        minimum=0.0,
    ),
    _number(
        "SYNC_CLAIM_LEASE_SECONDS",
        60,
        "Daemon replicas share the accounts through claims in Postgres; a claim the holder stops "
        "renewing (it died or lost the database) is taken over after this many seconds, 1-3600.",
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
        None,
        lambda env: envparse.optional_whole(env, "SYNC_RETENTION_DAYS", 1, 36_500),
    ),
    Variable(
        "SYNC_METRICS_PORT",
        "(unset: off)",
        "Port of the Prometheus /metrics, /healthz and /readyz server (daemon).",
        None,
        lambda env: envparse.optional_whole(env, "SYNC_METRICS_PORT", 0, 65535),
    ),
    Variable(
        "SYNC_METRICS_TEXTFILE",
        "(unset: off)",
        "once: after each pass, write its metrics to this file for node_exporter's textfile "
        "collector (atomically; the name must end in .prom), e.g. "
        "/var/lib/node_exporter/textfile/thingspace-sms-sync.prom.",
        None,
        lambda env: envparse.textfile(env, "SYNC_METRICS_TEXTFILE"),
    ),
    Variable(
        "SYNC_METRICS_PUSHGATEWAY",
        "(unset: off)",
        "once: after each pass, push its metrics to this Prometheus Pushgateway (http(s)://host:port; "
        "job thingspace-sms-sync-once, instance = host name), replacing the previous pass's.",
        None,
        lambda env: envparse.pushgateway(env, "SYNC_METRICS_PUSHGATEWAY"),
    ),
    _choice_variable(
        "SYNC_LOG_FORMAT",
        "auto",
        "auto (JSON unless the log stream is a terminal), json or console. Logs go to stderr (a "
        "command's stdout is its data), those of the daemons (`run`, `receive`) to stdout.",
        LOG_FORMATS,
        upper=False,
    ),
    _choice_variable(
        "SYNC_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        LOG_LEVELS,
        upper=True,
    ),
    _number("THINGSPACE_CONNECT_TIMEOUT", 5, "HTTP connect timeout, seconds.", minimum=0.1),
    _number(
        "THINGSPACE_READ_TIMEOUT",
        60,
        "HTTP read timeout, seconds: the longest wait for each piece of an answer.",
        minimum=0.1,
    ),
    _number(
        "THINGSPACE_TOTAL_TIMEOUT",
        120,
        "The longest one HTTP exchange may take, seconds: connect, headers and body together (an "
        "answer trickling in slowly is cut here; the read timeout only bounds each wait). An API "
        "call is also cut where the run budget ends; a token request or login never is.",
        minimum=1.0,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_ATTEMPTS",
        retry.DEFAULT_MAX_ATTEMPTS,
        "Attempts per API call for transient errors (GET/PUT only; a send is never retried).",
        minimum=1,
        maximum=20,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_WAIT",
        retry.DEFAULT_MAX_BACKOFF,
        "Longest backoff between two attempts, seconds.",
        minimum=0.0,
    ),
    _number(
        "THINGSPACE_RETRY_MAX_RETRY_AFTER",
        retry.DEFAULT_MAX_RETRY_AFTER,
        "Longest Retry-After the worker sleeps through; a longer one ends the run.",
        minimum=0.0,
    ),
    Variable(
        "SYNC_CALLBACK_URL",
        "(required for callbacks register)",
        "Public https:// address of the callback receiver as ThingSpace reaches it through the TLS "
        "terminator (e.g. https://sms-callbacks.example.com); an account's listener URL is this + "
        "/callbacks/ACCOUNT.",
        "",
        lambda env: envparse.stripped(env, "SYNC_CALLBACK_URL").rstrip("/"),
    ),
    Variable(
        "SYNC_CALLBACK_USERNAME",
        "(required for receive/callbacks register)",
        "Username ThingSpace puts in every callback body (registered with the listener; 1-40 characters).",
        "",
        lambda env: envparse.stripped(env, "SYNC_CALLBACK_USERNAME"),
    ),
    Variable(
        "SYNC_CALLBACK_PASSWORD",
        "(required for receive/callbacks register)",
        "Password ThingSpace puts in every callback body (16-40 characters: a long random one). Or "
        "SYNC_CALLBACK_PASSWORD_FILE.",
    ),
    Variable(
        "SYNC_CALLBACK_PASSWORD_FILE",
        "",
        "Path of a file holding the callback password (one trailing newline is stripped).",
    ),
    Variable(
        "SYNC_CALLBACK_PREVIOUS_PASSWORD",
        "",
        "During a password rotation, the old callback password, still accepted by the receiver. Or "
        "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE. Unset it once the new one is registered.",
    ),
    Variable(
        "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE",
        "",
        "Path of a file holding the previous callback password.",
    ),
    Variable(
        "SYNC_CALLBACK_HOST",
        _ALL_INTERFACES,
        "Address the callback receiver listens on (plain HTTP: put it behind a TLS terminator).",
        _ALL_INTERFACES,
        lambda env: envparse.stripped(env, "SYNC_CALLBACK_HOST") or _ALL_INTERFACES,
    ),
    _number(
        "SYNC_CALLBACK_PORT",
        9080,
        "Port of the callback receiver (sync-worker receive).",
        minimum=0,
        maximum=65535,
    ),
    _number(
        "SYNC_CALLBACK_MAX_BODY_BYTES",
        65536,
        "Largest callback body accepted; a longer one is refused with 413 (one declared longer than twice "
        "this before it is read).",
        minimum=1024,
        maximum=16 * 1024 * 1024,
    ),
    Variable(
        "SYNC_CALLBACK_ALLOWED_SOURCES",
        "(any)",
        "Comma-separated addresses or CIDR networks callbacks may come from (ThingSpace's published "
        "callback addresses); others get 403. Empty: any source.",
        (),
        lambda env: envparse.networks(env, "SYNC_CALLBACK_ALLOWED_SOURCES"),
    ),
    Variable(
        "SYNC_CALLBACK_TRUSTED_PROXIES",
        "(none)",
        "Comma-separated addresses or CIDR networks of the TLS terminator(s): only from them is "
        "X-Forwarded-For believed when checking SYNC_CALLBACK_ALLOWED_SOURCES.",
        (),
        lambda env: envparse.networks(env, "SYNC_CALLBACK_TRUSTED_PROXIES"),
    ),
    Variable(
        "THINGSPACE_ALLOW_INSECURE_LOOPBACK",
        "0",
        "1: allow plain http:// to a loopback host (the simulator). Refused for any other host.",
        False,
        lambda env: envparse.flag(env, "THINGSPACE_ALLOW_INSECURE_LOOPBACK"),
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


def default(name: str) -> Any:
    """The typed default of variable ``name``: what the ``Settings`` field starts from."""
    return _BY_NAME[name].value


# The key of a config.Settings field's metadata naming the variables it is read from.
SOURCES: Final = "variables"


def sources(*names: str) -> dict[str, tuple[str, ...]]:
    """The metadata of a ``config.Settings`` field read from the variables ``names`` (the first is
    the one whose ``read`` fills it): the one place that says which variable feeds which field."""
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise KeyError(f"no variable {unknown[0]} in VARIABLES")
    return {SOURCES: names}


def setting(name: str, *more: str) -> Any:
    """A ``config.Settings`` field read from variable ``name`` (and ``more``), its default that of
    ``name``: the field's type is said by ``Settings``, everything else by ``VARIABLES``."""
    return dataclasses.field(default=default(name), metadata=sources(name, *more))


def variables_markdown() -> str:
    """The README table of every variable (a test keeps the README equal to it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default and not var.default.startswith("(") else var.default
        lines.append(f"| `{var.name}` | {default or '-'} | {var.description.replace('|', '/')} |")
    return "\n".join(lines)
