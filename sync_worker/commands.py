"""The ``sync-worker`` commands: one function per command, each given a ``Context``.

``cli`` parses the arguments and imports this module only to run a command, so
``--help`` and usage errors never load the HTTP stack, the database driver or
the scheduler. Each command loads the settings once, configures logging, asks
``app`` for the parts it needs and returns a code from ``exitcodes``. What it
prints with ``ctx.print`` is its data, scrubbed of every known secret.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from sync_worker import (
    accounts,
    app,
    auth,
    config,
    db,
    errors,
    exitcodes,
    logs,
    migrations,
    report,
    secret,
    signals,
)

if TYPE_CHECKING:
    pass

# The modules only some commands need (the simulator, the demo, doctor) are imported inside those
# commands, and `app` imports the scheduler, Prometheus and the HTTP servers where it builds them:
# every `once` of a cron job would pay their import otherwise.


class Context:
    """What every command gets: the parsed arguments and where to write."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], out: TextIO, err: TextIO) -> None:
        self.args = args
        self.env = env
        self.out = out
        self.err = err
        # Whether the logs are JSON: None until the command configured them (cli reports a failure
        # in the log stream only as JSON, for machines; people read the one `error:` line).
        self.log_json: bool | None = None
        # Which database the command uses (db.describe), once its settings are loaded: named in
        # every database error, since libpq's defaults may have chosen an unexpected one.
        self.database: str | None = None
        # (message, kind) of a command that fails without raising, after printing its data (doctor's
        # report): cli reports it in the one form of a failure.
        self.failure: tuple[str, str] | None = None

    def settings(self, *, credentials: bool, accounts: bool, daemon: bool = False) -> config.Settings:
        settings = config.load(
            self.env, self.args.config, require_credentials=credentials, require_accounts=accounts
        )
        # A command's stdout is its data (`send ... | jq`, `once | tail -1`), so its logs go to
        # stderr. The daemon has no data: its log stream is stdout, as the deployment docs say.
        self.configure_logs(settings.log_format, settings.log_level, self.out if daemon else self.err)
        self.database = db.describe(settings.database_url)
        return settings

    def configure_logs(self, fmt: str, level: str, stream: TextIO) -> None:
        self.log_json = logs.configure(fmt, level, stream) == "json"

    def print(self, text: str = "") -> None:
        print(secret.scrub(text), file=self.out, flush=True)


def cmd_migrate(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    applied = app.migrate(settings, create_database=ctx.args.create_database)
    word_search = app.enable_word_search(settings) if ctx.args.word_search else None
    ctx.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    if word_search is not None:
        state = "created" if word_search else "already there"
        ctx.print(f"word search: index {migrations.WORD_SEARCH_INDEX} {state}")
    return exitcodes.OK


def cmd_run(ctx: Context) -> int:
    settings = ctx.settings(credentials=True, accounts=True, daemon=True)
    # SIGTERM stops the daemon cleanly from here on, also while it starts (its probes answer before
    # its loops run): the signal sets the stop event instead of ending the process.
    stop = threading.Event()
    with signals.stop_on_signals(stop):
        code = app.run_daemon(settings, stop_event=stop, install_signal_handlers=False)
    if code != exitcodes.OK:
        # Account runs still busy after the shutdown timeout sit in threads that cannot be
        # stopped (and interpreter exit would join them); leaving without joining them is
        # how the timeout is honoured.
        _flush_and_exit(code, ctx.out, ctx.err)
    return code


def _flush_and_exit(code: int, *streams: TextIO) -> None:
    """``os._exit`` skips every flush of a normal exit: the shutdown-timeout event must not be lost."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (*streams, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def cmd_once(ctx: Context) -> int:
    only: list[str] = ctx.args.account or []
    for name in only:
        config.validate_account_name(name, "--account")
    settings = ctx.settings(credentials=True, accounts=not only)
    # No connection of its own first: sync_once checks the connection and the schema before any
    # API call (exit 3), and a second connection here cost every pass a connect and a query.
    _refuse_strangers(settings, only)
    progress = sys.stderr if sys.stderr.isatty() else None
    result = app.run_pass(settings, accounts=only or None, progress=progress)
    # The summary is the last stdout line so cron wrappers can `tail -1 | jq`.
    ctx.print(json.dumps(report.jsonable(result.summary()), separators=(",", ":"), sort_keys=True))
    return int(result.exit_code)


def _refuse_strangers(settings: config.Settings, names: list[str]) -> None:
    """With accounts configured, each name ``once --account`` gives is one of them or known to the
    database: a typo would fail at the API and leave a failed run that ``status --check`` reports
    until ``accounts forget`` (as for ``cursor``). Without a configuration the names are the list."""
    strangers = [name for name in names if name not in settings.account_names]
    if not settings.account_names or not strangers:
        return
    # Only here a connection of its own: a pass over configured accounts opens none before sync_once.
    with app.connection(settings) as conn:
        for name in strangers:
            if not accounts.is_known(conn, name):
                raise errors.ValidationError(
                    f"--account: account {name} is neither configured (SYNC_ACCOUNTS / --config) nor "
                    "known to the database; `sync-worker accounts list` shows the known ones"
                )


def cmd_status(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
        rows = report.status_rows(conn)
    if not ctx.args.check:
        if ctx.args.json:
            ctx.print(json.dumps({"accounts": report.jsonable(rows)}, sort_keys=True))
        else:
            ctx.print(report.status_table(rows))
        return exitcodes.OK
    problems = report.status_problems(rows, settings.account_names, stale_after=ctx.args.stale_after)
    guard_problem = app.guard_problem(settings)
    if guard_problem is not None:
        problems.append({"account": None, "problem": "login_guard", "detail": guard_problem})
    if ctx.args.json:
        shown = {"accounts": report.jsonable(rows), "problems": problems, "healthy": not problems}
        ctx.print(json.dumps(shown, sort_keys=True))
    elif problems:
        ctx.print(f"UNHEALTHY: {len(problems)} problem(s)")
        for p in problems:
            ctx.print(f"{p['account'] or '(all accounts)'}: {p['problem']}: {p['detail']}")
    else:
        ctx.print(
            f"OK: {len(rows)} account(s) synced within {ctx.args.stale_after:g} s, none failing or "
            "quarantined; login guard ok"
        )
    return exitcodes.UNHEALTHY if problems else exitcodes.OK


def confirm(ctx: Context, statement: str, question: str, command: str) -> bool:
    """Say what the command is about to do (stderr), then take ``--yes`` or a terminal's yes.

    False: the operator declined. Off a terminal without ``--yes``: ``errors.ConfigError``.
    """
    ctx.err.write(statement + "\n")
    ctx.err.flush()
    if ctx.args.yes:
        return True
    can_confirm(ctx, command)
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def can_confirm(ctx: Context, command: str) -> None:
    """Refuse before any work when no confirmation can come: no --yes and no terminal to ask on."""
    if not ctx.args.yes and not sys.stdin.isatty():
        raise errors.ConfigError(f"{command}: pass --yes to confirm when not on a terminal")


def cmd_auth_status(ctx: Context) -> int:
    settings = ctx.settings(credentials=True, accounts=False)
    guard_status = app.guard_status(settings)
    if ctx.args.json:
        shown = {"username": settings.username, "counted_as_user": auth.user_key(settings.username)}
        ctx.print(json.dumps({**shown, **guard_status.as_dict()}, sort_keys=True))
    else:
        state = guard_status.state
        ctx.print(
            f"user {settings.username}: {state.failures} failed logins in a row presumed at ThingSpace, "
            f"counted per user ({auth.user_key(settings.username)!r}, any letter case) whatever the "
            f"base URL, as the vendor counts (this worker stops at {guard_status.threshold} for the "
            "same credentials, "
            f"{guard_status.ceiling} for any; "
            f"the vendor locks the user at {auth.VENDOR_LOCKOUT_AT})"
        )
        ctx.print(f"last login outcome: {state.last_outcome or 'none recorded'}")
        ctx.print(guard_status.problem or "ok: the next sync may log in")
    return exitcodes.AUTH if guard_status.problem is not None else exitcodes.OK


def cmd_auth_reset(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    if not settings.username:
        raise errors.ConfigError("THINGSPACE_USERNAME is required: the guard is kept per user")
    login_guard = app.login_guard(settings, app.connector(settings))
    app.database_ready(settings)
    recorded = login_guard.state().failures
    # Said before acting: a reset is a claim about the vendor's count, and a wrong one
    # hands the next failed logins the headroom that keeps the user from being locked.
    ctx.err.write(
        f"auth reset states that ThingSpace's count of failed logins for user {settings.username!r} is "
        "zero again: true only after a successful login with this user elsewhere (the ThingSpace "
        "portal, another integration) or after vendor support unlocked it. If it is not, the next "
        f"failed logins could lock the user. Recorded now: {recorded} failed in a row.\n"
    )
    ctx.err.flush()
    if not ctx.args.yes:
        if not sys.stdin.isatty():
            raise errors.ConfigError("auth reset: pass --yes to confirm when not on a terminal")
        answer = input("Is ThingSpace's count zero again? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            ctx.print("cancelled")
            return exitcodes.CONFIG
    login_guard.reset()
    ctx.print(
        f"login guard reset for user {settings.username} (was {recorded} failed in a row); "
        "running workers log in again at their next run"
    )
    return exitcodes.OK


def cmd_receive(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=True, daemon=True)
    return app.receive(settings)


def cmd_doctor(ctx: Context) -> int:
    from sync_worker import doctor  # noqa: PLC0415  # see the imports above

    try:
        settings = ctx.settings(credentials=False, accounts=False)
    except errors.ConfigError as exc:
        found = doctor.config_failed(exc)
    else:
        found = doctor.examine(settings, ctx.env, ctx.args.config, history=not ctx.args.no_history)
    ctx.print(found.to_json() if ctx.args.json else found.table())
    if found.exit_code != exitcodes.OK:
        ctx.failure = (found.failure(), "DoctorCheckFailed")
    return found.exit_code


def cmd_simulate(ctx: Context) -> int:
    from sync_worker import simulator  # noqa: PLC0415  # see the imports above

    args = ctx.args
    accounts = [
        config.validate_account_name(a.strip(), "--accounts") for a in args.accounts.split(",") if a.strip()
    ]
    if not 0 <= args.port <= 65535:
        raise errors.ValidationError(f"--port {args.port}: a port is 0-65535")
    shape = None if args.traffic is None else simulator.traffic.parse_shape(args.traffic)
    ctx.configure_logs(ctx.env.get("SYNC_LOG_FORMAT", "auto") or "auto", "INFO", ctx.err)
    simulator.serve(
        args.host,
        args.port,
        args.seed_messages,
        accounts,
        block_size=args.block_size,
        out=ctx.out,
        shape=shape,
    )
    return exitcodes.OK


def cmd_demo(ctx: Context) -> int:
    from sync_worker import demo  # noqa: PLC0415  # see the imports above

    if ctx.args.push:
        return demo.run_push(out=ctx.out)
    return demo.run(out=ctx.out)
