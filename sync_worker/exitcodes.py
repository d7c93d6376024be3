"""The documented exit codes of every command, and which error maps to which.

``--help``, the README table (a test keeps them equal) and every module that
returns a code read them from here.
"""

from __future__ import annotations

from typing import Final

from sync_worker import errors

OK: Final = 0
FAILED: Final = 1
CONFIG: Final = 2
DATABASE: Final = 3
AUTH: Final = 4
QUARANTINED: Final = 5
UNHEALTHY: Final = 6
INTERRUPTED: Final = 130

TABLE: Final[tuple[tuple[int, str], ...]] = (
    (OK, "success (every account synced)"),
    (
        FAILED,
        "some account failed (the others were synced; see the summary and logs); for `doctor`: a check "
        "failed for another reason (the API unreachable, a head block unreadable, SYNC_CALLBACK_URL...)",
    ),
    (
        CONFIG,
        "usage or configuration error (the message names the variable); for `cursor reset` and "
        "`accounts forget`: refused, the account is being synced right now (its lock is held) or, for "
        "`forget`, still configured here or on a running daemon replica; for `doctor`: the configuration "
        "check failed",
    ),
    (
        DATABASE,
        "database unreachable, or schema outdated: run `sync-worker migrate` (`doctor` too: it never "
        "migrates)",
    ),
    (
        AUTH,
        'login guard tripped or credentials refused (README: "The login guard"), `doctor` included (at '
        "OAuth or at the login)",
    ),
    (
        QUARANTINED,
        "every account drained, but some block was quarantined (`sync-worker quarantine list`); for "
        "`quarantine replay`: some block is still not wholly readable",
    ),
    (
        UNHEALTHY,
        "`status --check`: some account is stale, its last run failed or it has quarantined blocks, or "
        "the login guard is tripped (each problem is printed)",
    ),
    (INTERRUPTED, "aborted by a second Ctrl-C (the first one stops cleanly after the block in flight)"),
)


def for_error(exc: BaseException) -> int:
    """The exit code of an error that ended a command."""
    if isinstance(exc, (errors.ConfigError, errors.ValidationError)):
        return CONFIG
    if isinstance(exc, (errors.DatabaseUnavailableError, errors.SchemaError, errors.MigrationError)):
        return DATABASE
    if isinstance(exc, errors.AuthError):
        return AUTH
    return FAILED
