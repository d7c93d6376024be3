"""Hostile configuration: odd account names, metacharacter secrets, and the TLS switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_worker import app, config, errors, secret

# Shell, URL, SQL and JSON metacharacters together: none of them may change meaning anywhere.
NASTY_SECRET = "p@ss:w/rd?x=1&y=2#frag%20$(rm -rf /)`id`;|'\"\\ <>{}[]\u00e9\u202e"


def _env(**overrides: str) -> dict[str, str]:
    env = {
        "SYNC_ACCOUNTS": "0252012345-00001",
        "THINGSPACE_CLIENT_ID": "client-id",
        "THINGSPACE_CLIENT_SECRET": "client-secret-value",
        "THINGSPACE_USERNAME": "user",
        "THINGSPACE_PASSWORD": "password-value",
    }
    env.update(overrides)
    return env


@pytest.mark.parametrize(
    "name",
    ["acc/one", "..", "../etc", "acc one", "acc\u00e9nt", "acc%2F1", "acc;drop", "ab", "a" * 33, "acc\tx"],
)
def test_hostile_account_name_in_env_is_refused(name: str) -> None:
    """An account name with '/', '..', spaces, non-ASCII, encodings or bad length fails config."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(_env(SYNC_ACCOUNTS=name))
    assert "SYNC_ACCOUNTS" in str(exc_info.value)


@pytest.mark.parametrize(
    "name",
    [
        "acc/one",
        "..",
        "acc one",
        "acc\u00e9nt",
        "x\u0000yz",
        "acc\n",
        "abc\n",
    ],
)
def test_hostile_account_name_in_toml_is_refused(tmp_path: Path, name: str) -> None:
    """An account table name in the TOML file obeys the same rule, including a trailing newline."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\u0000", "\\u0000")
    path = tmp_path / "sync.toml"
    path.write_text(f'[accounts."{escaped}"]\ninterval_seconds = 60\n', encoding="utf-8")
    env = _env()
    del env["SYNC_ACCOUNTS"]
    with pytest.raises(errors.ConfigError):
        config.load(env, path)


def test_account_name_keeps_leading_zeros() -> None:
    """A valid account name of digits with leading zeros is kept exactly."""
    settings = config.load(_env(SYNC_ACCOUNTS="0000000001-00001, 007"))
    assert settings.account_names == ("0000000001-00001", "007")


@pytest.mark.parametrize("via_file", [False, True])
def test_metacharacter_secrets_load_verbatim_and_never_show(tmp_path: Path, via_file: bool) -> None:
    """Secrets full of shell/URL metacharacters load byte for byte and never appear in repr or str."""
    env = _env()
    if via_file:
        del env["THINGSPACE_PASSWORD"], env["THINGSPACE_CLIENT_SECRET"]
        (tmp_path / "pw").write_text(NASTY_SECRET + "\n", encoding="utf-8")
        (tmp_path / "cs").write_text("cs-" + NASTY_SECRET, encoding="utf-8")
        env["THINGSPACE_PASSWORD_FILE"] = str(tmp_path / "pw")
        env["THINGSPACE_CLIENT_SECRET_FILE"] = str(tmp_path / "cs")
    else:
        env["THINGSPACE_PASSWORD"] = NASTY_SECRET
        env["THINGSPACE_CLIENT_SECRET"] = "cs-" + NASTY_SECRET
    settings = config.load(env)
    assert settings.password.reveal() == NASTY_SECRET
    assert settings.client_secret.reveal() == "cs-" + NASTY_SECRET
    shown = repr(settings) + str(settings) + repr(settings.password) + str(settings.client_secret)
    assert NASTY_SECRET not in shown
    assert NASTY_SECRET not in app.current_fingerprint(settings)
    assert NASTY_SECRET in secret.known_values()


def test_database_password_is_registered_and_redacted() -> None:
    """The password inside SYNC_DATABASE_URL is registered for scrubbing and absent from repr."""
    pw = "db-Pa55:@/?#word"
    url = (
        "postgresql://sync:"
        + pw.replace(":", "%3A")
        .replace("@", "%40")
        .replace("/", "%2F")
        .replace("?", "%3F")
        .replace("#", "%23")
        + "@127.0.0.1:5432/sms"
    )
    settings = config.load(_env(SYNC_DATABASE_URL=url))
    assert pw in secret.known_values()
    assert pw not in repr(settings)
    assert pw not in settings.redacted_database_url()
    assert "%3A" not in settings.redacted_database_url()


def test_bad_database_url_error_hides_password() -> None:
    """An unparseable database URL is refused without echoing the string (which holds a password)."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(_env(SYNC_DATABASE_URL="host=x password='unterminated-Secret99"))
    assert "unterminated-Secret99" not in str(exc_info.value)


def test_tls_is_the_default() -> None:
    """With no base URL configured the worker talks https to the vendor and the insecure switch is off."""
    settings = config.load(_env())
    assert settings.base_url.startswith("https://")
    assert settings.allow_insecure_loopback is False


@pytest.mark.parametrize(
    "url",
    ["http://thingspace.verizon.com/api", "http://127.0.0.1:8080/api", "http://localhost/api"],
)
def test_plain_http_needs_the_explicit_switch(url: str) -> None:
    """Plain http is refused unless THINGSPACE_ALLOW_INSECURE_LOOPBACK=1 is set, even on loopback."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(_env(THINGSPACE_BASE_URL=url))
    assert "THINGSPACE_ALLOW_INSECURE_LOOPBACK" in str(exc_info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://thingspace.verizon.com/api",
        "http://127.0.0.1.nip.io/api",
        "http://localhost.evil.example/api",
        "http://10.0.0.1/api",
        "https://thingspace.verizon.com/api",
    ],
)
def test_insecure_switch_only_for_loopback_hosts(url: str) -> None:
    """The insecure switch is refused with any non-loopback host, so it cannot weaken a production config."""
    with pytest.raises(errors.ConfigError):
        config.load(_env(THINGSPACE_BASE_URL=url, THINGSPACE_ALLOW_INSECURE_LOOPBACK="1"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/api", "http://[::1]:9/api", "http://localhost/api"])
def test_insecure_switch_allows_loopback(url: str) -> None:
    """With the switch, http to a loopback simulator is accepted."""
    settings = config.load(_env(THINGSPACE_BASE_URL=url, THINGSPACE_ALLOW_INSECURE_LOOPBACK="1"))
    assert settings.allow_insecure_loopback is True


@pytest.mark.parametrize("value", ["2", "maybe", "enable"])
def test_insecure_switch_rejects_ambiguous_values(value: str) -> None:
    """A value that is neither clearly on nor off is a configuration error, not silently 'on'."""
    with pytest.raises(errors.ConfigError):
        config.load(_env(THINGSPACE_ALLOW_INSECURE_LOOPBACK=value))


@pytest.mark.parametrize(
    "url",
    [
        "https://user:Base-Url-Pw-1@thingspace.example/api",
        "https://user:Base-Url-Pw-1@thingspace.example:99999/api",
        "https://user:Base-Url-Pw-1@thingspace.example:port/api",
    ],
)
def test_base_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    """A base URL carrying a user:password is refused and the error text never contains the password."""
    with pytest.raises(errors.ConfigError) as exc_info:
        config.load(_env(THINGSPACE_BASE_URL=url))
    assert "Base-Url-Pw-1" not in str(exc_info.value)
