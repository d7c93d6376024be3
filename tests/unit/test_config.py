"""config.load(): defaults, validation that names the variable, secrets, the TOML file, VARIABLES."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from sync_worker import app, client, config, errors, secret, variables

BASE_ENV = {
    "SYNC_ACCOUNTS": "0252012345-00001,0252012345-00002",
    "THINGSPACE_CLIENT_ID": "client-id",
    "THINGSPACE_CLIENT_SECRET": "cfg-client-secret-1",
    "THINGSPACE_USERNAME": "operator",
    "THINGSPACE_PASSWORD": "cfg-password-1",
}


def env(**overrides: str | None) -> dict[str, str]:
    result = dict(BASE_ENV)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def test_defaults_match_the_agreed_settings() -> None:
    """With only the required variables set, every knob has its documented default."""
    s = config.load(env())
    assert s.base_url == "https://thingspace.verizon.com/api"
    assert s.database_url == ""
    assert s.account_names == ("0252012345-00001", "0252012345-00002")
    assert (s.interval_seconds, s.jitter_seconds, s.concurrency) == (300.0, 30.0, 4)
    assert s.run_budget_seconds == s.interval_seconds
    assert (s.shutdown_timeout_seconds, s.login_guard_threshold, s.metrics_port) == (30.0, 3, None)
    assert (s.log_format, s.log_level) == ("auto", "INFO")
    assert (s.http_connect_timeout, s.http_read_timeout) == (5.0, 60.0)
    assert (s.retry_max_attempts, s.retry_max_wait_seconds, s.retry_max_retry_after_seconds) == (
        5,
        30.0,
        120.0,
    )
    assert s.allow_insecure_loopback is False


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading."""
    s = config.load(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.concurrency = 8  # type: ignore[misc]


def test_values_are_parsed() -> None:
    """Numbers, the log settings and the metrics port are read from their variables."""
    s = config.load(
        env(
            SYNC_INTERVAL_SECONDS="60",
            SYNC_JITTER_SECONDS="0",
            SYNC_CONCURRENCY="8",
            SYNC_RUN_BUDGET_SECONDS="45.5",
            SYNC_LOGIN_GUARD_THRESHOLD="4",
            SYNC_METRICS_PORT="9108",
            SYNC_LOG_FORMAT="JSON",
            SYNC_LOG_LEVEL="debug",
            THINGSPACE_RETRY_MAX_ATTEMPTS="2",
        )
    )
    assert (s.interval_seconds, s.jitter_seconds, s.concurrency, s.run_budget_seconds) == (60.0, 0.0, 8, 45.5)
    assert (s.login_guard_threshold, s.metrics_port, s.log_format, s.log_level) == (4, 9108, "json", "DEBUG")
    assert s.accounts[0] == config.AccountSettings("0252012345-00001", 60.0, 0.0)
    assert s.retry_max_attempts == 2


NUMERIC = [
    "SYNC_INTERVAL_SECONDS",
    "SYNC_JITTER_SECONDS",
    "SYNC_CONCURRENCY",
    "SYNC_RUN_BUDGET_SECONDS",
    "SYNC_SHUTDOWN_TIMEOUT_SECONDS",
    "SYNC_LOGIN_GUARD_THRESHOLD",
    "SYNC_METRICS_PORT",
    "THINGSPACE_CONNECT_TIMEOUT",
    "THINGSPACE_READ_TIMEOUT",
    "THINGSPACE_TOTAL_TIMEOUT",
    "THINGSPACE_RETRY_MAX_ATTEMPTS",
    "THINGSPACE_RETRY_MAX_WAIT",
    "THINGSPACE_RETRY_MAX_RETRY_AFTER",
]


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", ["ten", "-1", "nan", "1e999"])
def test_bad_number_names_its_variable(name: str, value: str) -> None:
    """A non-numeric, negative or non-finite number fails with the variable's name in the message."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(env(**{name: value}))
    assert name in str(exc_info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SYNC_LOGIN_GUARD_THRESHOLD", "5"),
        ("SYNC_LOGIN_GUARD_THRESHOLD", "0"),
        ("SYNC_CONCURRENCY", "0"),
        ("SYNC_CONCURRENCY", "1000"),
        ("SYNC_METRICS_PORT", "70000"),
        ("SYNC_INTERVAL_SECONDS", "0"),
        ("THINGSPACE_RETRY_MAX_ATTEMPTS", "0"),
        ("THINGSPACE_TOTAL_TIMEOUT", "0.5"),
        ("SYNC_CONCURRENCY", "2.5"),
        ("SYNC_LOG_FORMAT", "xml"),
        ("SYNC_LOG_LEVEL", "LOUD"),
    ],
)
def test_out_of_range_value_names_its_variable(name: str, value: str) -> None:
    """Values outside the allowed range (a guard threshold at the vendor's lock-out of 5...) are refused."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(env(**{name: value}))
    assert name in str(exc_info.value)


@pytest.mark.parametrize(
    "name", ["THINGSPACE_CLIENT_ID", "THINGSPACE_CLIENT_SECRET", "THINGSPACE_USERNAME", "THINGSPACE_PASSWORD"]
)
def test_missing_credential_names_its_variable(name: str) -> None:
    """Every credential is required for API commands, and the error says which one is missing."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(env(**{name: None}))
    assert name in str(exc_info.value)


def test_credentials_optional_for_database_only_commands() -> None:
    """migrate/status/cursor load without ThingSpace credentials or accounts."""
    s = config.load(
        {"SYNC_DATABASE_URL": "postgresql:///x"}, require_credentials=False, require_accounts=False
    )
    assert s.accounts == ()
    assert not s.password


def test_missing_accounts_names_sync_accounts() -> None:
    """run/once need accounts: the error names SYNC_ACCOUNTS."""
    with pytest.raises(errors.ConfigError, match="SYNC_ACCOUNTS"):
        config.load(env(SYNC_ACCOUNTS=""))


def test_duplicate_account_is_refused() -> None:
    """An account listed twice would be synced twice at once; it is a config error."""
    with pytest.raises(errors.ConfigError, match="SYNC_ACCOUNTS"):
        config.load(env(SYNC_ACCOUNTS="abc,def,abc"))


def test_secret_files_strip_exactly_one_trailing_newline(tmp_path: Path) -> None:
    """*_FILE secrets are read verbatim except for one trailing newline (editors add one)."""
    (tmp_path / "secret").write_text("  file-secret-1 \n\n", encoding="utf-8")
    (tmp_path / "password").write_text("file-password-1\r\n", encoding="utf-8")
    s = config.load(
        env(
            THINGSPACE_CLIENT_SECRET=None,
            THINGSPACE_PASSWORD=None,
            THINGSPACE_CLIENT_SECRET_FILE=str(tmp_path / "secret"),
            THINGSPACE_PASSWORD_FILE=str(tmp_path / "password"),
        )
    )
    assert s.client_secret.reveal() == "  file-secret-1 \n"
    assert s.password.reveal() == "file-password-1"


def test_unreadable_secret_file_names_the_file_variable(tmp_path: Path) -> None:
    """A *_FILE that cannot be read fails with the _FILE variable named."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(env(THINGSPACE_PASSWORD=None, THINGSPACE_PASSWORD_FILE=str(tmp_path / "missing")))
    assert "THINGSPACE_PASSWORD_FILE" in str(exc_info.value)


def test_secret_and_file_together_are_ambiguous(tmp_path: Path) -> None:
    """Setting both a secret and its _FILE is refused rather than silently picking one."""
    (tmp_path / "s").write_text("other-secret-2", encoding="utf-8")
    with pytest.raises(errors.ConfigError, match="THINGSPACE_CLIENT_SECRET_FILE"):
        config.load(env(THINGSPACE_CLIENT_SECRET_FILE=str(tmp_path / "s")))


def test_no_secret_in_repr_or_errors() -> None:
    """repr/str of Settings never show the client secret, the password or the database password."""
    s = config.load(env(SYNC_DATABASE_URL="postgresql://u:db-pass-word-9@localhost/x"))
    shown = repr(s) + str(s)
    for value in ("cfg-client-secret-1", "cfg-password-1", "db-pass-word-9"):
        assert value not in shown
    assert "db-pass-word-9" not in s.redacted_database_url()
    assert "db-pass-word-9" in secret.known_values()


def test_toml_overrides_per_account(tmp_path: Path) -> None:
    """[accounts."NAME"] tables override the interval and jitter of that account only."""
    path = tmp_path / "sync.toml"
    path.write_text('[accounts."0252012345-00002"]\ninterval_seconds = 900\njitter_seconds = 5\n')
    s = config.load(env(), path)
    assert s.accounts == (
        config.AccountSettings("0252012345-00001", 300.0, 30.0),
        config.AccountSettings("0252012345-00002", 900.0, 5.0),
    )


def test_toml_alone_defines_accounts(tmp_path: Path) -> None:
    """Without SYNC_ACCOUNTS, the TOML tables are the account list."""
    path = tmp_path / "sync.toml"
    path.write_text('[accounts."abc-1"]\n[accounts."abc-2"]\ninterval_seconds = 60\n')
    s = config.load(env(SYNC_ACCOUNTS=""), path)
    assert s.account_names == ("abc-1", "abc-2")


@pytest.mark.parametrize(
    "text",
    [
        '[accounts."not-listed"]\ninterval_seconds = 60\n',
        '[accounts."0252012345-00001"]\ninterval = 60\n',
        '[accounts."0252012345-00001"]\ninterval_seconds = "60"\n',
        '[accounts."0252012345-00001"]\ninterval_seconds = -1\n',
        "concurrency = 3\n",
        "this is not toml",
    ],
)
def test_bad_toml_is_refused(tmp_path: Path, text: str) -> None:
    """Typos, unknown keys, wrong types and invalid TOML in --config fail naming the file."""
    path = tmp_path / "sync.toml"
    path.write_text(text)
    with pytest.raises(errors.ConfigError, match="--config"):
        config.load(env(), path)


def test_missing_toml_file_is_refused(tmp_path: Path) -> None:
    """A --config path that does not exist is a configuration error."""
    with pytest.raises(errors.ConfigError, match="--config"):
        config.load(env(), tmp_path / "nope.toml")


def test_every_settings_field_is_documented() -> None:
    """Every Settings field names the variables it is read from, all in VARIABLES (which drives
    --help and the README); every variable feeds a field, each name once, each described."""
    named = [f.metadata.get(variables.SOURCES) for f in dataclasses.fields(config.Settings)]
    assert all(named), "a Settings field names no variable"
    names = [var.name for var in variables.VARIABLES]
    assert len(names) == len(set(names))
    assert {name for sources in named if sources for name in sources} == set(names)
    assert all(var.description for var in variables.VARIABLES)


def test_each_variable_is_linked_to_its_field_once() -> None:
    """A variable with a reader is the first source of exactly one field, and a field with a
    default starts from its first variable's typed default: the link and the default are said once."""
    firsts = [f.metadata[variables.SOURCES][0] for f in dataclasses.fields(config.Settings)]
    readers = [var.name for var in variables.VARIABLES if var.read is not None]
    assert all(firsts.count(name) == 1 for name in readers)
    for f in dataclasses.fields(config.Settings):
        if f.default is not dataclasses.MISSING:
            assert f.default == variables.default(f.metadata[variables.SOURCES][0]), f.name
    with pytest.raises(KeyError, match="SYNC_NO_SUCH_VARIABLE"):
        variables.sources("SYNC_NO_SUCH_VARIABLE")


def test_readme_documents_every_variable() -> None:
    """The README contains the generated variables table verbatim, so the two never drift."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert variables.variables_markdown() in readme


def test_credential_fingerprint_tracks_credentials_without_revealing_them() -> None:
    """The fingerprint is stable for equal credentials, changes with any of them, and holds no secret."""
    a = app.current_fingerprint(config.load(env()))
    assert a == app.current_fingerprint(config.load(env()))
    assert a != app.current_fingerprint(config.load(env(THINGSPACE_PASSWORD="cfg-password-2")))
    assert a != app.current_fingerprint(config.load(env(THINGSPACE_CLIENT_SECRET="cfg-client-secret-2")))
    assert a != app.current_fingerprint(config.load(env(THINGSPACE_USERNAME="someone")))
    assert "cfg-password-1" not in a and len(a) == 64


def test_client_config_carries_the_settings() -> None:
    """client_config() hands base URL, credentials, timeouts and retry knobs to the client."""
    s = config.load(
        env(
            THINGSPACE_BASE_URL="http://127.0.0.1:9/api/",
            THINGSPACE_ALLOW_INSECURE_LOOPBACK="1",
            THINGSPACE_READ_TIMEOUT="7",
            THINGSPACE_TOTAL_TIMEOUT="42",
            THINGSPACE_RETRY_MAX_ATTEMPTS="3",
            THINGSPACE_RETRY_MAX_RETRY_AFTER="11",
        )
    )
    cfg = app.client_config(
        s,
    )
    assert isinstance(cfg, client.ClientConfig)
    assert cfg.base_url == "http://127.0.0.1:9/api"
    assert cfg.password.reveal() == "cfg-password-1"
    assert cfg.timeout == (5.0, 7.0) and cfg.total_timeout == 42.0
    # A login may take up to the total timeout: the guard's lease outlasts it.
    assert app.login_guard(s, app.connector(s))._lease_seconds > cfg.total_timeout
    assert (cfg.retry.max_attempts, cfg.retry.max_retry_after) == (3, 11.0)
    assert cfg.allow_insecure_loopback is True


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_database_names_the_variable_and_hides_the_password() -> None:
    """An unreachable database fails fast, naming SYNC_DATABASE_URL, without the password."""
    url = f"postgresql://sync:db-secret-77@127.0.0.1:{_closed_port()}/sms"
    s = config.load(env(SYNC_DATABASE_URL=url))
    with pytest.raises(errors.DatabaseUnavailableError) as exc_info:
        app.connector(s, connect_timeout=5)()
    assert "SYNC_DATABASE_URL" in str(exc_info.value)
    assert "db-secret-77" not in str(exc_info.value)


def test_database_url_file_is_read_and_its_password_registered(tmp_path: Path) -> None:
    """SYNC_DATABASE_URL_FILE gives the connection string (one newline stripped); its password is
    then scrubbed like any secret; setting both variables is ambiguous."""
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql://sync:file-db-pw-9@db.example:5432/sms\n")
    settings = config.load(env(SYNC_DATABASE_URL_FILE=str(url_file)))
    assert settings.database_url == "postgresql://sync:file-db-pw-9@db.example:5432/sms"
    assert "file-db-pw-9" not in secret.scrub("password file-db-pw-9")
    assert "file-db-pw-9" not in settings.redacted_database_url()
    with pytest.raises(errors.ConfigError, match="not both"):
        config.load(env(SYNC_DATABASE_URL="postgresql://x/y", SYNC_DATABASE_URL_FILE=str(url_file)))
    with pytest.raises(errors.ConfigError, match="SYNC_DATABASE_URL_FILE"):
        config.load(env(SYNC_DATABASE_URL_FILE=str(tmp_path / "missing")))


def test_metrics_export_settings_are_checked(tmp_path: Path) -> None:
    """SYNC_METRICS_TEXTFILE must be a .prom file in an existing directory; SYNC_METRICS_PUSHGATEWAY
    an http(s) URL without credentials."""
    good = config.load(
        env(SYNC_METRICS_TEXTFILE=str(tmp_path / "s.prom"), SYNC_METRICS_PUSHGATEWAY="http://pgw:9091")
    )
    assert (good.metrics_textfile, good.metrics_pushgateway) == (str(tmp_path / "s.prom"), "http://pgw:9091")
    for name, value in (
        ("SYNC_METRICS_TEXTFILE", str(tmp_path / "s.txt")),
        ("SYNC_METRICS_TEXTFILE", str(tmp_path / "nodir" / "s.prom")),
        ("SYNC_METRICS_PUSHGATEWAY", "pgw:9091"),
        ("SYNC_METRICS_PUSHGATEWAY", "http://user:pw@pgw:9091"),
    ):
        with pytest.raises(errors.ConfigError, match=name):
            config.load(env(**{name: value}))


@pytest.mark.parametrize(
    ("name", "highest"),
    [
        ("SYNC_INTERVAL_SECONDS", 604_800),
        ("SYNC_JITTER_SECONDS", 86_400),
        ("SYNC_CLAIM_LEASE_SECONDS", 3_600),
    ],
)
def test_schedule_durations_have_an_upper_bound(name: str, highest: int) -> None:
    """Interval, jitter and lease load up to their bound; above it (1e13 included, which once loaded and
    then failed every claim with "timestamp out of range") the error names the variable and the bound."""
    field = {
        "SYNC_INTERVAL_SECONDS": "interval_seconds",
        "SYNC_JITTER_SECONDS": "jitter_seconds",
        "SYNC_CLAIM_LEASE_SECONDS": "claim_lease_seconds",
    }[name]
    assert getattr(config.load(env(**{name: str(highest)})), field) == highest
    for too_long in (str(highest + 1), "1e13"):
        with pytest.raises(errors.ConfigError, match=rf"^{name}='{too_long}' must be at most {highest}$"):
            config.load(env(**{name: too_long}))


def test_per_account_durations_have_the_same_upper_bounds(tmp_path: Path) -> None:
    """interval_seconds and jitter_seconds of an [accounts."NAME"] table are bounded like their variables."""
    path = tmp_path / "accounts.toml"
    path.write_text('[accounts."0252012345-00001"]\ninterval_seconds = 604800\n', encoding="utf-8")
    (first, _) = config.load(env(), config_file=path).accounts
    assert first.interval_seconds == 604_800
    for key, value in (("interval_seconds", "1e13"), ("jitter_seconds", "86401")):
        path.write_text(f'[accounts."0252012345-00001"]\n{key} = {value}\n', encoding="utf-8")
        with pytest.raises(errors.ConfigError, match=rf"accounts\.0252012345-00001\.{key} must be a finite"):
            config.load(env(), config_file=path)


@pytest.mark.parametrize(
    ("variable", "via_file"),
    [
        ("SYNC_CALLBACK_PASSWORD", False),
        ("SYNC_CALLBACK_PASSWORD", True),
        ("SYNC_CALLBACK_PREVIOUS_PASSWORD", False),
        ("SYNC_CALLBACK_PREVIOUS_PASSWORD", True),
    ],
)
def test_a_callback_password_under_16_characters_is_refused_naming_its_variable(
    tmp_path: Path, variable: str, via_file: bool
) -> None:
    """A 15-character callback password (or previous password), set directly or in a file, stops the
    start with the variable it came from named and the value nowhere in the message; 16 is accepted."""
    short, enough = "short-pass-1234", "long-enough-1234"  # test values: 15 and 16 characters
    assert (len(short), len(enough)) == (15, 16)

    def settings(value: str) -> config.Settings:
        overrides: dict[str, str | None] = {"SYNC_CALLBACK_PASSWORD": "current-password-0000"}
        if via_file:
            (tmp_path / "pw").write_text(value + "\n", encoding="utf-8")
            overrides[variable] = None
            overrides[f"{variable}_FILE"] = str(tmp_path / "pw")
        else:
            overrides[variable] = value
        return config.load(env(**overrides))

    with pytest.raises(errors.ConfigError) as refused:
        settings(short)
    named = f"{variable}_FILE" if via_file else variable
    assert str(refused.value).startswith(f"{named} is shorter than 16 characters")
    assert short not in str(refused.value)
    accepted = settings(enough)
    found = (
        accepted.callback_password
        if variable == "SYNC_CALLBACK_PASSWORD"
        else accepted.callback_previous_password
    )
    assert found is not None and found.reveal() == enough
