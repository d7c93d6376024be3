"""The ``sync-worker`` command line: the parser, ``--help`` and the exit code of an error.

Kept light on purpose: ``--help`` and usage errors load no HTTP stack, database
driver or scheduler. The commands themselves live in ``commands``, ``state_commands`` and
``api_commands``, imported only once a command is about to run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sync_worker import errors, exitcodes, logs, secret, variables


def environment_help(command: str | None = None, wrapped: dict[str, list[str]] | None = None) -> str:
    """The ``--help`` epilog: the variables ``command`` reads (``variables.variables_of``; every one
    for ``sync-worker --help``) and every exit code. ``wrapped`` caches each variable's lines."""
    listed = variables.VARIABLES if command is None else variables.variables_of(command)
    cache = {} if wrapped is None else wrapped
    if listed:
        lines = ["environment variables" + ("" if command is None else f" read by {command}") + ":"]
    else:
        lines = [f"environment variables: none (`{command}` brings its own settings)"]
    for var in listed:
        if var.name not in cache:
            cache[var.name] = [
                f"  {var.name}  [default: {var.default or '-'}]",
                *textwrap.wrap(
                    var.description, width=96, initial_indent="      ", subsequent_indent="      "
                ),
            ]
        lines.extend(cache[var.name])
    if command is not None:
        lines.append("(`sync-worker --help` lists every variable.)")
    lines.append("")
    lines.append('--config FILE: a TOML file with per-account tables, e.g. [accounts."0252012345-00001"]')
    lines.append("  interval_seconds = 600 / jitter_seconds = 60.")
    lines.append("")
    lines.append("exit codes:")
    lines.extend(f"  {code:<3} {text}" for code, text in exitcodes.TABLE)
    return "\n".join(lines)


def version() -> str:
    """The installed package's version (what ``sync-worker --version`` prints)."""
    import importlib.metadata  # noqa: PLC0415  # only --version needs it

    try:
        return importlib.metadata.version("thingspace-sms-sync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (``--help`` and commands never pay for it)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(f"{parser.prog} {version()}", flush=True)
        parser.exit()


DOCTOR_DESCRIPTION = """\
Answers "will this work, and what does the real API send us?" before the daemon runs, one verdict per
check (ok, warn, fail, or skipped with the reason): the configuration; which database (host, port,
name, user; never the password) and its schema version (never migrated); OAuth; the session login
through the login guard (no login when the guard refuses, and why); the clock against the API's Date
header; for each account the head block of its history queue, summarised (status, messages, top-level
and message members known and unknown, timestamp forms, device kinds, whether it reads as a block);
its registered callback listeners (passwords never shown); whether SYNC_CALLBACK_URL resolves.

It never sends an SMS, never sends a next token (nothing is acknowledged), never migrates. It writes
only (1) the login guard's row: the login is counted before it is sent and its verdict recorded, which
is what keeps any login from being the one that locks the user; (2) a final head block (200) with
messages: the platform may dequeue a final block once it is handed over, so it is stored as a sync
stores it (an unreadable final answer is quarantined). A 202 head block stays queued and unwritten.
--no-history skips the head blocks. Exit code: that of the most basic failing check (2 configuration,
3 database or schema, 4 OAuth or login refused or guard tripped, 1 any other); warnings exit 0."""


# --- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915  # one flat list of add_argument calls
    # Each variable's text is wrapped once, not per command: wrapping all of them for each of 24
    # commands cost every start ~25 ms.
    wrapped: dict[str, list[str]] = {}
    epilog = environment_help(wrapped=wrapped)
    parser = argparse.ArgumentParser(
        prog="sync-worker",
        description="Keeps a Postgres copy of every SMS that IoT devices send through Verizon ThingSpace.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='TOML file with per-account settings ([accounts."NAME"] interval_seconds, jitter_seconds)',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: str, help_text: str, parent: Any = sub) -> Any:
        p = parent.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        # "sync-worker cursor show" -> "cursor show": the variables this command reads.
        p.epilog = environment_help(p.prog.removeprefix(parser.prog).strip(), wrapped)
        p.set_defaults(func=func)
        return p

    p = add("migrate", "cmd_migrate", "create or upgrade the database schema (safe to run concurrently)")
    p.add_argument(
        "--create-database",
        action="store_true",
        help="first create the database SYNC_DATABASE_URL names if it does not exist (needs CREATEDB)",
    )
    p.add_argument(
        "--word-search",
        action="store_true",
        help="also create the opt-in word-search index (pg_trgm, docs/schema.md: Finding messages by a word)",
    )
    add("run", "cmd_run", "run the daemon: sync every account on its interval until SIGTERM/SIGINT")
    p = add("once", "cmd_once", "one pass over the accounts (each drained to its final block), then exit")
    p.add_argument(
        "--account",
        action="append",
        metavar="A",
        help="only this account (repeatable); with accounts configured, one of them or known to the database",
    )
    p = add("status", "cmd_status", "per account: cursor, last success, lag, rows, last error")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit {exitcodes.UNHEALTHY} if an account is stale, failing or quarantined, or the login "
        "guard is tripped (for Nagios-style checks and scripts); prints each problem",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="with --check: an account without a success for longer is stale (default: 1800)",
    )

    p = add(
        "retention",
        "state_commands.cmd_retention",
        "remove history older than SYNC_RETENTION_DAYS (by timestamp and by when it was stored; "
        "whole months) and old runs; a dry run unless --apply",
    )
    p.add_argument("--days", type=int, metavar="N", help="the window in days (default: SYNC_RETENTION_DAYS)")
    p.add_argument("--apply", action="store_true", help="remove what the dry run lists")
    p.add_argument("--batch", type=int, default=10_000, metavar="ROWS", help="rows per delete batch")

    cursor = sub.add_parser("cursor", help="show or reset the stored history cursors")
    cursor_sub = cursor.add_subparsers(dest="cursor_command", metavar="ACTION", required=True)
    p = add("show", "state_commands.cmd_cursor_show", "print the stored cursor of each account", cursor_sub)
    p.add_argument("--account", action="append", metavar="A", help="only this account (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "reset",
        "state_commands.cmd_cursor_reset",
        "forget an account's cursor: the next sync starts at the head (exit 2 while a run of it holds "
        "its lock)",
        cursor_sub,
    )
    p.add_argument("--account", required=True, metavar="A", help="a configured or known account")
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required off a terminal)")

    acc = sub.add_parser("accounts", help="list the accounts the database knows, or forget one")
    acc_sub = acc.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    p = add(
        "list",
        "state_commands.cmd_accounts_list",
        "configured accounts and accounts the database knows",
        acc_sub,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "forget",
        "state_commands.cmd_accounts_forget",
        "remove an account's cursor, runs, failure streak and schedule row (history kept unless "
        "--with-history); exit 2 while a run of it holds its lock, or while it is configured here or "
        "on a daemon replica seen within its lease (SYNC_CLAIM_LEASE_SECONDS)",
        acc_sub,
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument(
        "--with-history", action="store_true", help="also delete its stored messages and quarantined blocks"
    )
    p.add_argument(
        "--even-if-configured",
        action="store_true",
        help="forget it even while configured here or on a running daemon replica: its state goes, and "
        "the replicas keep syncing it (they register it again within a third of their lease, due at "
        "once) from the head of its queue",
    )
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required off a terminal)")

    auth = sub.add_parser("auth", help="the login lock-out guard")
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    p = add(
        "status",
        "cmd_auth_status",
        "consecutive failed logins for the configured user (exit 4: tripped)",
        auth_sub,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "reset",
        "cmd_auth_reset",
        "state that ThingSpace's failed-login count is zero again (after a good login or a vendor unlock)",
        auth_sub,
    )
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required off a terminal)")

    quarantine = sub.add_parser("quarantine", help="list, show and replay quarantined history blocks")
    q_sub = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    p = add(
        "list",
        "state_commands.cmd_quarantine_list",
        "quarantined blocks not resolved yet (data on stdout)",
        q_sub,
    )
    p.add_argument("--account", metavar="A", help="only this account")
    p.add_argument("--all", action="store_true", help="resolved blocks too")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("show", "state_commands.cmd_quarantine_show", "one quarantined block", q_sub)
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--body", type=Path, metavar="FILE", help="write the exact kept bytes to FILE, a new file")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --body: replace FILE if it exists (never writes through a symlink)",
    )
    p = add(
        "replay",
        "state_commands.cmd_quarantine_replay",
        "re-read kept blocks with the current code and store their messages (exit 5: some still unreadable)",
        q_sub,
    )
    p.add_argument("id", type=int, nargs="*", metavar="ID", help="default: every unresolved block")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add(
        "send", "api_commands.cmd_send", "send an SMS to devices (never retried: a retry could send it twice)"
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--device", required=True, action="append", metavar="KIND:ID", help="repeatable")
    p.add_argument("--message", required=True, metavar="TEXT")
    p.add_argument(
        "--encoding", default="7-bit", choices=["7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA"]
    )
    p = add(
        "start-delivery",
        "api_commands.cmd_start_delivery",
        "ask ThingSpace to push the account's queue to its callback URL (away from this worker)",
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required off a terminal)")

    callbacks = sub.add_parser("callbacks", help="the account's callback listener (push mode)")
    cb_sub = callbacks.add_subparsers(dest="callbacks_command", metavar="ACTION", required=True)
    p = add(
        "list",
        "api_commands.cmd_callbacks_list",
        "the account's registered listeners (passwords never shown)",
        cb_sub,
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "register",
        "api_commands.cmd_callbacks_register",
        "register this receiver as the account's SMS listener (refuses to replace another one)",
        cb_sub,
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--url", metavar="URL", help="default: SYNC_CALLBACK_URL/callbacks/ACCOUNT")
    p.add_argument("--replace", action="store_true", help="replace a listener that is not this receiver")
    p = add(
        "remove",
        "api_commands.cmd_callbacks_remove",
        "remove the account's SMS listener (pushes then fail and go back to the queue for polling)",
        cb_sub,
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--url", metavar="URL", help="this receiver's URL (default: from SYNC_CALLBACK_URL)")
    p.add_argument("--force", action="store_true", help="remove a listener that is not this receiver")
    p = add(
        "kept",
        "state_commands.cmd_callbacks_kept",
        "callbacks of a shape the receiver does not know, kept in sms_callback (data on stdout)",
        cb_sub,
    )
    p.add_argument("--account", metavar="A", help="only this account")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add(
        "receive",
        "cmd_receive",
        "serve the callback endpoint: store pushed SMS of SYNC_ACCOUNTS until SIGTERM/SIGINT",
    )

    p = add(
        "doctor",
        "cmd_doctor",
        "before the daemon: check the configuration, the database, OAuth, the login (through the login "
        "guard), the clock, each account's head block (read, never acknowledged) and callback listeners",
    )
    p.description = DOCTOR_DESCRIPTION
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="do not read the head blocks (then the login guard's row is all doctor writes)",
    )
    p = add(
        "simulate", "cmd_simulate", "run the ThingSpace simulator (for trying the worker without an account)"
    )
    # The simulator's defaults (simulator.DEFAULT_*, a test keeps them equal) spelled out here:
    # importing the simulator would load its HTTP stack for every `--help`.
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8480, help="port to listen on, 0: any free one (default: %(default)s)"
    )
    p.add_argument(
        "--seed-messages",
        type=int,
        default=1000,
        metavar="N",
        help="messages queued on each account at start (default: %(default)s)",
    )
    p.add_argument(
        "--accounts",
        default="0252012345-00001,0252012345-00002",
        metavar="A,B,...",
        help="the accounts it serves (default: %(default)s)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=100,
        metavar="N",
        help="messages per history block (default: %(default)s)",
    )
    p.add_argument(
        "--traffic",
        metavar="SHAPE",
        help="seed traffic of this shape instead of the default: one-id, mixed, three-ids, or knobs "
        "'ids=1,1,2,3;scripts=ascii,latin,cjk,emoji;timestamps=seconds_z,nanos_z,offset;malformed=0.02;"
        "upper=0.05', alone or after a name (README.md, simulate)",
    )
    p = add(
        "demo", "cmd_demo", "what `make run` does: simulator + embedded Postgres, one pass, status, a query"
    )
    p.add_argument(
        "--push", action="store_true", help="the same in push mode: receiver, callbacks, a polling pass"
    )
    return parser


def report_failure(ctx: Any, message: str, *, kind: str, code: int) -> None:
    """The one form of a failed command, whichever it is and wherever it failed.

    People get one line on stderr, always the last: ``sync-worker: error: MESSAGE``. When the logs
    are JSON (``SYNC_LOG_FORMAT=json``, or ``auto`` off a terminal) the log stream also gets one
    ``command_failed`` event for machines, also when the command failed before loading its
    settings; console logs get nothing more (the line says it all).
    """
    # One line: libpq's messages carry a tab-indented hint line of their own.
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if ctx.log_json is None:
        fmt = ctx.env.get("SYNC_LOG_FORMAT", "").strip().lower()
        ctx.configure_logs(fmt if fmt in ("json", "console") else "auto", "INFO", ctx.err)
    if ctx.log_json:
        logs.get_logger(__name__).error("command_failed", error=message, kind=kind, exit_code=code)
    print(f"sync-worker: error: {secret.scrub(message)}", file=ctx.err, flush=True)


def command_function(func: str) -> Callable[[Any], int]:
    """The function of a parser's ``func``: ``cmd_x`` of ``commands``, or ``module.cmd_x``."""
    # Imported here, not at the top: see the module docstring.
    from sync_worker import api_commands, commands, state_commands  # noqa: PLC0415

    modules = {"commands": commands, "state_commands": state_commands, "api_commands": api_commands}
    module, _, name = func.rpartition(".")
    found: Callable[[Any], int] = getattr(modules[module or "commands"], name)
    return found


def main(argv: Sequence[str] | None = None, *, env: dict[str, str] | None = None) -> int:
    """Run one command; returns the exit code (see ``exitcodes.TABLE``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors and 0 after --help.
        return int(exc.code) if isinstance(exc.code, int) else exitcodes.CONFIG
    # Imported here, not at the top: see the module docstring.
    from sync_worker import commands  # noqa: PLC0415

    if argv is None:
        # The process's own command line, so the process is ours: what it imported lives until it
        # exits. Frozen, those objects are skipped by every full collection, and by the one at
        # interpreter exit, which traversed them all (~60-90 ms of CPU for every `once`). Not done
        # for a caller's argv (tests): their garbage of the moment would never be collected.
        gc.freeze()

    ctx = commands.Context(args, dict(os.environ) if env is None else env, sys.stdout, sys.stderr)
    try:
        code = int(command_function(args.func)(ctx))
        if code != exitcodes.OK and ctx.failure is not None:
            message, kind = ctx.failure
            report_failure(ctx, message, kind=kind, code=code)
        return code
    except errors.SyncWorkerError as exc:
        code = exitcodes.for_error(exc)
        message = str(exc)
        if isinstance(exc, errors.StoreError) and ctx.database and ctx.database not in message:
            # "run sync-worker migrate" must not send anyone to migrate the wrong database.
            message = f"{message} [database: {ctx.database}]"
        report_failure(ctx, message, kind=type(exc).__name__, code=code)
        return code
    except KeyboardInterrupt:
        print("sync-worker: interrupted", file=ctx.err, flush=True)
        return exitcodes.INTERRUPTED
