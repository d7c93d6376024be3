"""Settings: read once from the environment (and an optional TOML file), then frozen.

Every problem is reported up front as ``errors.ConfigError`` naming the variable,
so a misconfigured worker dies at start-up instead of half-way through a sync.
``variables.VARIABLES`` is the single description of every variable: ``Settings``
takes its defaults from it, and ``--help`` and the README table are generated from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from sync_worker import auth, envparse, errors, models, secret, urls, variables

LogFormat = Literal["auto", "json", "console"]
# A callback password travels in every callback body: one this short could not be told from
# ordinary words by the log scrubber, nor resist guessing for long.
MIN_CALLBACK_PASSWORD_LENGTH: Final = 16
# The default of sync.sync_account for callers without settings: that of SYNC_MAX_BLOCKS_PER_RUN.
DEFAULT_MAX_BLOCKS_PER_RUN: Final[int] = variables.default("SYNC_MAX_BLOCKS_PER_RUN")


@dataclasses.dataclass(frozen=True, slots=True)
class AccountSettings:
    name: str
    interval_seconds: float
    jitter_seconds: float


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the worker is configured with. Build it with ``load()``."""

    # Each field names the variables it is read from (variables.sources; the first one's `read`
    # fills it) and takes its default from the first (variables.setting): said once, there.
    # repr=False: a URL may embed the database password.
    database_url: str = dataclasses.field(
        repr=False, metadata=variables.sources("SYNC_DATABASE_URL", "SYNC_DATABASE_URL_FILE")
    )
    base_url: str = dataclasses.field(metadata=variables.sources("THINGSPACE_BASE_URL"))
    client_id: str = dataclasses.field(metadata=variables.sources("THINGSPACE_CLIENT_ID"))
    client_secret: secret.Secret = dataclasses.field(
        metadata=variables.sources("THINGSPACE_CLIENT_SECRET", "THINGSPACE_CLIENT_SECRET_FILE")
    )
    username: str = dataclasses.field(metadata=variables.sources("THINGSPACE_USERNAME"))
    password: secret.Secret = dataclasses.field(
        metadata=variables.sources("THINGSPACE_PASSWORD", "THINGSPACE_PASSWORD_FILE")
    )
    accounts: tuple[AccountSettings, ...] = dataclasses.field(metadata=variables.sources("SYNC_ACCOUNTS"))
    interval_seconds: float = variables.setting("SYNC_INTERVAL_SECONDS")
    jitter_seconds: float = variables.setting("SYNC_JITTER_SECONDS")
    concurrency: int = variables.setting("SYNC_CONCURRENCY")
    run_budget_seconds: float = variables.setting("SYNC_RUN_BUDGET_SECONDS")
    max_blocks_per_run: int = variables.setting("SYNC_MAX_BLOCKS_PER_RUN")
    shutdown_timeout_seconds: float = variables.setting("SYNC_SHUTDOWN_TIMEOUT_SECONDS")
    claim_lease_seconds: float = variables.setting("SYNC_CLAIM_LEASE_SECONDS")
    login_guard_threshold: int = variables.setting("SYNC_LOGIN_GUARD_THRESHOLD")
    retention_days: int | None = variables.setting("SYNC_RETENTION_DAYS")
    metrics_port: int | None = variables.setting("SYNC_METRICS_PORT")
    metrics_textfile: str | None = variables.setting("SYNC_METRICS_TEXTFILE")
    metrics_pushgateway: str | None = variables.setting("SYNC_METRICS_PUSHGATEWAY")
    log_format: LogFormat = variables.setting("SYNC_LOG_FORMAT")
    log_level: str = variables.setting("SYNC_LOG_LEVEL")
    http_connect_timeout: float = variables.setting("THINGSPACE_CONNECT_TIMEOUT")
    http_read_timeout: float = variables.setting("THINGSPACE_READ_TIMEOUT")
    http_total_timeout: float = variables.setting("THINGSPACE_TOTAL_TIMEOUT")
    retry_max_attempts: int = variables.setting("THINGSPACE_RETRY_MAX_ATTEMPTS")
    retry_max_wait_seconds: float = variables.setting("THINGSPACE_RETRY_MAX_WAIT")
    retry_max_retry_after_seconds: float = variables.setting("THINGSPACE_RETRY_MAX_RETRY_AFTER")
    allow_insecure_loopback: bool = variables.setting("THINGSPACE_ALLOW_INSECURE_LOOPBACK")
    # Re-read at every login, so a daemon picks up a corrected secret without a restart.
    client_secret_file: Path | None = variables.setting("THINGSPACE_CLIENT_SECRET_FILE")
    password_file: Path | None = variables.setting("THINGSPACE_PASSWORD_FILE")
    callback_url: str = variables.setting("SYNC_CALLBACK_URL")
    callback_username: str = variables.setting("SYNC_CALLBACK_USERNAME")
    callback_password: secret.Secret = dataclasses.field(
        default_factory=lambda: secret.Secret(""),
        metadata=variables.sources("SYNC_CALLBACK_PASSWORD", "SYNC_CALLBACK_PASSWORD_FILE"),
    )
    callback_previous_password: secret.Secret | None = variables.setting(
        "SYNC_CALLBACK_PREVIOUS_PASSWORD", "SYNC_CALLBACK_PREVIOUS_PASSWORD_FILE"
    )
    callback_host: str = variables.setting("SYNC_CALLBACK_HOST")
    callback_port: int = variables.setting("SYNC_CALLBACK_PORT")
    callback_max_body_bytes: int = variables.setting("SYNC_CALLBACK_MAX_BODY_BYTES")
    callback_allowed_sources: tuple[envparse.Network, ...] = variables.setting(
        "SYNC_CALLBACK_ALLOWED_SOURCES"
    )
    callback_trusted_proxies: tuple[envparse.Network, ...] = variables.setting(
        "SYNC_CALLBACK_TRUSTED_PROXIES"
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
            client_secret = envparse.read_secret_file(
                "THINGSPACE_CLIENT_SECRET_FILE", self.client_secret_file
            )
        if self.password_file is not None:
            password = envparse.read_secret_file("THINGSPACE_PASSWORD_FILE", self.password_file)
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

    # The connection string first: its parser is here (the one catch of a driver error in config).
    values: dict[str, Any] = {"database_url": _database_url(_database_url_value(env))}
    # Every variable with a reader of its own, in VARIABLES order, into the field that names it first.
    field_of = {f.metadata[variables.SOURCES][0]: f.name for f in dataclasses.fields(Settings)}
    values.update({field_of[var.name]: var.read(env) for var in variables.VARIABLES if var.read is not None})
    insecure = bool(values["allow_insecure_loopback"])
    values["base_url"] = urls.check_base_url(
        envparse.stripped(env, "THINGSPACE_BASE_URL") or urls.DEFAULT_BASE_URL,
        allow_insecure_loopback=insecure,
    )
    interval = float(values["interval_seconds"])
    values["run_budget_seconds"] = envparse.number(env, "SYNC_RUN_BUDGET_SECONDS", interval, minimum=1.0)
    values.update(_callback_settings(env, str(values["callback_url"]), str(values["callback_username"])))
    client_id, username = str(values["client_id"]), str(values["username"])
    client_secret = envparse.secret_value(env, "THINGSPACE_CLIENT_SECRET")
    password = envparse.secret_value(env, "THINGSPACE_PASSWORD")
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
        client_secret_file=envparse.path(env, "THINGSPACE_CLIENT_SECRET_FILE"),
        password_file=envparse.path(env, "THINGSPACE_PASSWORD_FILE"),
    )


def _callback_settings(env: Mapping[str, str], url: str, username: str) -> dict[str, Any]:
    """The receiver's secrets, checked against the vendor's 40-character limit and our 16-character floor."""
    if url:
        urls.check_base_url(
            url,
            allow_insecure_loopback=envparse.flag(env, "THINGSPACE_ALLOW_INSECURE_LOOPBACK"),
            name="SYNC_CALLBACK_URL",
        )
    if len(username) > models.MAX_CALLBACK_CREDENTIAL_LENGTH:
        raise errors.ConfigError(
            f"SYNC_CALLBACK_USERNAME is longer than {models.MAX_CALLBACK_CREDENTIAL_LENGTH} characters"
        )
    password = envparse.secret_value(env, "SYNC_CALLBACK_PASSWORD")
    previous = envparse.secret_value(env, "SYNC_CALLBACK_PREVIOUS_PASSWORD")
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
    "interval_seconds": (1.0, variables.MAX_INTERVAL_SECONDS),
    "jitter_seconds": (0.0, variables.MAX_JITTER_SECONDS),
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
    if envparse.stripped(env, "SYNC_DATABASE_URL_FILE"):
        return envparse.secret_value(env, "SYNC_DATABASE_URL").reveal().strip()
    return envparse.stripped(env, "SYNC_DATABASE_URL")


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
