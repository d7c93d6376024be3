"""Facts kept in one place: a default the docs repeat next to its variable is the one ``variables.VARIABLES``
holds, and the login guard's lease comes from one formula, whoever builds the guard."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

import pytest

from sync_worker import app, config, guard, variables

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*.md")])
# `SYNC_CLAIM_LEASE_SECONDS` (default 60), `SYNC_SHUTDOWN_TIMEOUT_SECONDS` (30 s), `SYNC_CALLBACK_PORT`
# (9080), `SYNC_CALLBACK_MAX_BODY_BYTES` (65536 bytes by default): a number in brackets after the name.
_COPY = re.compile(
    r"`((?:SYNC|THINGSPACE)_[A-Z0-9_]+)` \((?:default )?(\d[\d,]*(?:\.\d+)?)(?: (?:s|seconds|bytes))?"
    r"(?: by default)?\)"
)
_DEFAULTS = {v.name: v.default for v in variables.VARIABLES}


def copies(text: str) -> list[tuple[str, str]]:
    """(variable, number as written) for every default the text repeats after a variable's name."""
    return [(m.group(1), m.group(2)) for m in _COPY.finditer(" ".join(text.split()))]


def documented_copies() -> list[tuple[str, str, str]]:
    return [
        (str(path.relative_to(ROOT)), name, number)
        for path in DOCS
        for name, number in copies(path.read_text(encoding="utf-8"))
    ]


def test_the_docs_repeat_defaults_that_are_checked() -> None:
    """The reader finds the copies (so a changed wording cannot silently check nothing)."""
    found = {(path, name) for path, name, _ in documented_copies()}
    assert ("docs/operations.md", "SYNC_CLAIM_LEASE_SECONDS") in found
    assert len(found) >= 5


@pytest.mark.parametrize(("path", "name", "number"), documented_copies())
def test_a_default_the_docs_repeat_is_the_configured_default(path: str, name: str, number: str) -> None:
    """`VARIABLE` (default N) in README.md, docs/ or deploy/ names a real variable whose default is N."""
    assert name in _DEFAULTS, f"{path} names {name}, which variables.VARIABLES does not have"
    assert float(number.replace(",", "")) == float(_DEFAULTS[name]), (
        f"{path} says {name} defaults to {number}; variables.VARIABLES says {_DEFAULTS[name]}"
    )


def test_a_wrong_copy_is_caught() -> None:
    """The reader sees the forms the docs use, and a stale number differs from the default."""
    text = "`SYNC_CLAIM_LEASE_SECONDS`\n(default 90), `SYNC_CALLBACK_MAX_BODY_BYTES` (65536 bytes by default)"
    assert copies(text) == [("SYNC_CLAIM_LEASE_SECONDS", "90"), ("SYNC_CALLBACK_MAX_BODY_BYTES", "65536")]
    assert float(_DEFAULTS["SYNC_CLAIM_LEASE_SECONDS"]) != 90


def _settings(**env: str) -> config.Settings:
    return config.load(env, require_credentials=False, require_accounts=False)


def test_the_guard_lease_is_one_formula_of_the_http_timeout() -> None:
    """The lease app.login_guard gives follows the configured total timeout through guard.login_lease,
    and a guard built without one gets the same lease as one built from the default settings."""

    def connect() -> NoReturn:  # never called: building a guard opens no connection
        raise AssertionError

    custom = _settings(THINGSPACE_TOTAL_TIMEOUT="17")
    assert app.login_guard(custom, connect).lease_seconds == 17 + guard.LEASE_MARGIN_SECONDS
    assert guard.login_lease(17) == 17 + guard.LEASE_MARGIN_SECONDS
    default_lease = app.login_guard(_settings(), connect).lease_seconds
    assert guard.LoginGuard(connect, username="u", threshold=3).lease_seconds == default_lease
    assert default_lease == guard.login_lease(120)  # THINGSPACE_TOTAL_TIMEOUT
