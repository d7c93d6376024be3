"""The ``sync-worker`` command line.

Each command loads the settings once, configures logging, and maps the
project's errors to the documented exit codes. Modules that pull in the HTTP
stack, the scheduler or the simulator are imported inside the command that
needs them, so ``--help`` and configuration errors stay instant.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shlex
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from sync_worker import config, errors, logs, secret, signals

EXIT_OK: Final = 0
EXIT_ACCOUNT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_DATABASE: Final = 3
EXIT_AUTH: Final = 4
EXIT_QUARANTINED: Final = 5
EXIT_INTERRUPTED: Final = signals.EXIT_ABORTED

EXIT_CODES: Final[tuple[tuple[int, str], ...]] = (
    (EXIT_OK, "success (every account synced)"),
    (EXIT_ACCOUNT_FAILED, "some account failed (the others were synced; see the summary and logs)"),
    (EXIT_CONFIG, "usage or configuration error (the message names the variable)"),
    (EXIT_DATABASE, "database unreachable, or schema outdated: run `sync-worker migrate`"),
    (EXIT_AUTH, 'login guard tripped or credentials refused (README: "The login guard")'),
    (
        EXIT_QUARANTINED,
        "every account drained, but some block was quarantined (`sync-worker quarantine list`); for "
        "`quarantine replay`: some block is still not wholly readable",
    ),
    (EXIT_INTERRUPTED, "aborted by a second Ctrl-C (the first one stops cleanly after the block in flight)"),
)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error that ended a command."""
    if isinstance(exc, (errors.ConfigError, errors.ValidationError)):
        return EXIT_CONFIG
    if isinstance(exc, (errors.DatabaseUnavailableError, errors.SchemaError, errors.MigrationError)):
        return EXIT_DATABASE
    if isinstance(exc, errors.AuthError):
        return EXIT_AUTH
    return EXIT_ACCOUNT_FAILED


def environment_help() -> str:
    """The ``--help`` epilog: every variable (from ``config.VARIABLES``) and every exit code."""
    lines = ["environment variables:"]
    for var in config.VARIABLES:
        lines.append(f"  {var.name}  [default: {var.default or '-'}]")
        lines.extend(
            textwrap.wrap(var.description, width=96, initial_indent="      ", subsequent_indent="      ")
        )
    lines.append("")
    lines.append('--config FILE: a TOML file with per-account tables, e.g. [accounts."0252012345-00001"]')
    lines.append("  interval_seconds = 600 / jitter_seconds = 60.")
    lines.append("")
    lines.append("exit codes:")
    lines.extend(f"  {code:<3} {text}" for code, text in EXIT_CODES)
    return "\n".join(lines)


# --- plumbing ----------------------------------------------------------------


class _Context:
    """What every command gets: the parsed arguments and where to write."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], out: TextIO, err: TextIO) -> None:
        self.args = args
        self.env = env
        self.out = out
        self.err = err
        self.logging = False

    def settings(self, *, credentials: bool, accounts: bool, logs_to_stderr: bool = False) -> config.Settings:
        settings = config.load(
            self.env, self.args.config, require_credentials=credentials, require_accounts=accounts
        )
        # Commands whose stdout is data (quarantine list/show) keep their logs off it.
        logs.configure(settings.log_format, settings.log_level, self.err if logs_to_stderr else self.out)
        self.logging = True
        return settings

    def print(self, text: str = "") -> None:
        print(secret.scrub(text), file=self.out, flush=True)


@contextlib.contextmanager
def _connection(settings: config.Settings, *, check_schema: bool = True) -> Iterator[Any]:
    with config.connect(settings) as conn:
        if check_schema:
            from sync_worker import migrations  # noqa: PLC0415

            migrations.check_schema(conn)
        yield conn


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        if isinstance(value, datetime.datetime):
            return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        text = str(value).replace("\n", " ")
        return text if len(text) <= 48 else text[:45] + "..."

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)
    return "\n".join(lines)


def status_rows(conn: Any) -> list[dict[str, Any]]:
    """``store.account_status`` as plain dicts (shared by ``status`` and the demo)."""
    from sync_worker import store  # noqa: PLC0415

    return [dataclasses.asdict(s) for s in store.account_status(conn)]


_STATUS_COLUMNS: Final = (
    ("account_name", "account"),
    ("cursor_present", "cursor"),
    ("last_success_at", "last success"),
    ("lag_seconds", "lag s"),
    ("row_count", "rows"),
    ("last_run_outcome", "last run"),
    ("running_on", "running on"),
    ("quarantined", "quarantined"),
    ("last_error", "last error"),
)


def format_status(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no accounts synced yet)"
    renamed = [{title: row.get(key) for key, title in _STATUS_COLUMNS} for row in rows]
    for row in renamed:
        row["cursor"] = "stored" if row["cursor"] else "head"
    return format_table(renamed, [title for _, title in _STATUS_COLUMNS])


def _progress_metrics(out: TextIO) -> Any:
    """A Metrics that also prints one line per committed block (for long ``once`` runs on a terminal)."""
    from sync_worker import metrics  # noqa: PLC0415

    class ProgressMetrics(metrics.Metrics):
        def __init__(self) -> None:
            super().__init__()
            self._totals: dict[str, list[int]] = {}
            self._print_lock = threading.Lock()

        def block_committed(
            self, account: str, received: int, inserted: int, replays: int, malformed: int
        ) -> None:
            super().block_committed(account, received, inserted, replays, malformed)
            with self._print_lock:
                totals = self._totals.setdefault(account, [0, 0, 0])
                totals[0] += 1
                totals[1] += received
                totals[2] += inserted
                print(
                    f"  {account}: block {totals[0]}, {totals[1]} messages, {totals[2]} new",
                    file=out,
                    flush=True,
                )

    return ProgressMetrics()


# --- commands ----------------------------------------------------------------


def cmd_migrate(ctx: _Context) -> int:
    from sync_worker import migrations  # noqa: PLC0415

    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings, check_schema=False) as conn:
        applied = migrations.migrate(conn)
    logs.get_logger(__name__).info("migrated", applied=list(applied))
    ctx.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return EXIT_OK


def cmd_run(ctx: _Context) -> int:
    from sync_worker import health, metrics, scheduler  # noqa: PLC0415

    settings = ctx.settings(credentials=True, accounts=True)
    with _connection(settings):
        pass
    m = metrics.Metrics()
    liveness = scheduler.Liveness()
    server = None
    if settings.metrics_port is not None:
        # Each readiness probe also refreshes the tripped gauge from the database.
        login_guard = _login_guard(settings, on_state=m.login_guard)

        def database_ready() -> None:
            with _connection(settings):
                pass

        def guard_ready() -> None:
            status = login_guard.observe(settings.credentials().fingerprint(settings.base_url))
            if status.problem is not None:
                raise errors.LoginGuardTrippedError(status.problem)

        server = health.HealthServer(
            settings.metrics_port,
            m,
            live=liveness,
            ready=health.checks([("database", database_ready), ("login_guard", guard_ready)]),
        ).start()
    try:
        code = scheduler.run_daemon(settings, metrics=m, liveness=liveness)
    finally:
        if server is not None:
            server.stop()
    if code != EXIT_OK:
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


def cmd_once(ctx: _Context) -> int:
    from sync_worker import sync  # noqa: PLC0415

    only: list[str] = ctx.args.account or []
    for name in only:
        config.validate_account_name(name, "--account")
    settings = ctx.settings(credentials=True, accounts=not only)
    with _connection(settings):
        pass
    stop = threading.Event()
    progress = _progress_metrics(sys.stderr) if sys.stderr.isatty() else None
    with signals.stop_on_signals(stop):
        result = sync.sync_once(settings, accounts=only or None, stop_event=stop, metrics=progress)
    # The summary is the last stdout line so cron wrappers can `tail -1 | jq`.
    ctx.print(json.dumps(_jsonable(result.summary()), separators=(",", ":"), sort_keys=True))
    return int(result.exit_code)


def cmd_status(ctx: _Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        rows = status_rows(conn)
    if ctx.args.json:
        ctx.print(json.dumps({"accounts": _jsonable(rows)}, sort_keys=True))
    else:
        ctx.print(format_status(rows))
    return EXIT_OK


def cmd_cursor_show(ctx: _Context) -> int:
    from sync_worker import store  # noqa: PLC0415

    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        if ctx.args.account:
            names = list(ctx.args.account)
        else:
            names = list(settings.account_names) or [str(r["account_name"]) for r in status_rows(conn)]
        cursors = {name: store.get_cursor(conn, name) for name in names}
    if ctx.args.json:
        ctx.print(json.dumps(cursors, sort_keys=True))
    else:
        for name, token in cursors.items():
            ctx.print(f"{name}\t{token if token is not None else '(head of queue)'}")
    return EXIT_OK


def cmd_cursor_reset(ctx: _Context) -> int:
    from sync_worker import store  # noqa: PLC0415

    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=False, accounts=False)
    if not ctx.args.yes:
        if not sys.stdin.isatty():
            raise errors.ConfigError("cursor reset: pass --yes to confirm when not on a terminal")
        answer = input(
            f"Forget the stored cursor of {account}? The next sync restarts at the head of the queue "
            "(the current block is fetched again; nothing is lost). [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            ctx.print("cancelled")
            return EXIT_CONFIG
    with _connection(settings) as conn:
        store.clear_cursor(conn, account, "operator: sync-worker cursor reset")
    logs.get_logger(__name__).warning("cursor_reset", account=account)
    ctx.print(f"{account}: cursor cleared; the next sync starts at the head of the queue")
    return EXIT_OK


_QUARANTINE_COLUMNS: Final = (
    "id",
    "account_name",
    "http_status",
    "body_size",
    "seen_count",
    "first_stored_at",
    "resolved_at",
    "problem",
)


def _quarantine_dict(block: Any) -> dict[str, Any]:
    shown = dataclasses.asdict(block)
    shown.pop("body", None)
    return shown


def cmd_quarantine_list(ctx: _Context) -> int:
    from sync_worker import store  # noqa: PLC0415

    account = ctx.args.account
    if account is not None:
        config.validate_account_name(account, "--account")
    settings = ctx.settings(credentials=False, accounts=False, logs_to_stderr=True)
    with _connection(settings) as conn:
        blocks = store.list_quarantine(conn, account, include_resolved=ctx.args.all)
    rows = [_quarantine_dict(b) for b in blocks]
    if ctx.args.json:
        ctx.print(json.dumps({"quarantined": _jsonable(rows)}, sort_keys=True))
    elif rows:
        ctx.print(format_table(rows, _QUARANTINE_COLUMNS))
    else:
        ctx.print("(nothing quarantined)" if not ctx.args.all else "(no quarantined blocks)")
    return EXIT_OK


def cmd_quarantine_show(ctx: _Context) -> int:
    from sync_worker import store  # noqa: PLC0415

    settings = ctx.settings(credentials=False, accounts=False, logs_to_stderr=True)
    with _connection(settings) as conn:
        found = store.show_quarantine(conn, ctx.args.id)
    if found is None:
        raise errors.ValidationError(f"no quarantined block with id {ctx.args.id}")
    block, extra = found
    shown = {**_quarantine_dict(block), **extra}
    if ctx.args.body is not None:
        assert block.body is not None
        ctx.args.body.write_bytes(block.body)
        shown["body_written_to"] = str(ctx.args.body)
    if ctx.args.json:
        ctx.print(json.dumps(_jsonable(shown), sort_keys=True))
    else:
        width = max(len(k) for k in shown)
        for key, value in shown.items():
            ctx.print(f"{key.ljust(width)}  {_jsonable(value) if value is not None else '-'}")
    return EXIT_OK


def cmd_quarantine_replay(ctx: _Context) -> int:
    from sync_worker import quarantine, store  # noqa: PLC0415

    settings = ctx.settings(credentials=False, accounts=False, logs_to_stderr=True)
    log = logs.get_logger(__name__)
    results = []
    with _connection(settings) as conn:
        ids = list(ctx.args.id) or store.unresolved_quarantine_ids(conn)
        for quarantine_id in ids:
            result = store.replay_quarantined(conn, quarantine_id, quarantine.read_block)
            if result is None:
                raise errors.ValidationError(f"no quarantined block with id {quarantine_id}")
            log.info(
                "quarantine_replayed",
                quarantine_id=result.quarantine_id,
                account=result.account_name,
                messages=result.messages,
                inserted=result.inserted,
                resolved=result.resolved,
                problem=result.problem,
            )
            results.append(result)
    if ctx.args.json:
        ctx.print(json.dumps({"replayed": _jsonable(results)}, sort_keys=True))
    elif results:
        ctx.print(
            format_table(
                [dataclasses.asdict(r) for r in results],
                ("quarantine_id", "account_name", "messages", "inserted", "resolved", "problem"),
            )
        )
    else:
        ctx.print("(nothing to replay)")
    return EXIT_OK if all(r.resolved for r in results) else EXIT_QUARANTINED


def _login_guard(settings: config.Settings, *, on_state: Callable[[bool], None] | None = None) -> Any:
    from sync_worker import sync  # noqa: PLC0415

    return sync.build_guard(settings, lambda: config.connect(settings), on_state=on_state)


def cmd_auth_status(ctx: _Context) -> int:
    settings = ctx.settings(credentials=True, accounts=False)
    with _connection(settings):
        pass
    status = _login_guard(settings).status(settings.credentials().fingerprint(settings.base_url))
    if ctx.args.json:
        ctx.print(json.dumps({"username": settings.username, **status.as_dict()}, sort_keys=True))
    else:
        state = status.state
        ctx.print(
            f"user {settings.username}: {state.failures} failed logins in a row presumed at ThingSpace "
            f"(this worker stops at {status.threshold} for the same credentials, {status.ceiling} for any; "
            f"the vendor locks the user at {config.VENDOR_LOCKOUT_AT})"
        )
        ctx.print(f"last login outcome: {state.last_outcome or 'none recorded'}")
        ctx.print(status.problem or "ok: the next sync may log in")
    return EXIT_AUTH if status.problem is not None else EXIT_OK


def cmd_auth_reset(ctx: _Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    if not settings.username:
        raise errors.ConfigError("THINGSPACE_USERNAME is required: the guard is kept per user")
    login_guard = _login_guard(settings)
    with _connection(settings):
        pass
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
            return EXIT_CONFIG
    login_guard.reset()
    ctx.print(
        f"login guard reset for user {settings.username} (was {recorded} failed in a row); "
        "running workers log in again at their next run"
    )
    return EXIT_OK


@contextlib.contextmanager
def _api_client(settings: config.Settings) -> Iterator[Any]:
    from sync_worker import client  # noqa: PLC0415

    with _connection(settings):
        pass
    api = client.ThingSpaceClient(settings.client_config(login_guard=_login_guard(settings)))
    try:
        yield api
    finally:
        api.close()


def _device(text: str) -> Any:
    from sync_worker import models  # noqa: PLC0415

    kind, sep, ident = text.partition(":")
    if not sep or not kind or not ident:
        raise errors.ValidationError(f"--device {text!r} must be KIND:ID, e.g. imei:990000862471854")
    device = models.DeviceId(id=ident, kind=kind.lower())
    device.validate()
    return device


def cmd_send(ctx: _Context) -> int:
    from sync_worker import models  # noqa: PLC0415

    request = models.SMSSendRequest(
        account_name=ctx.args.account,
        sms_message=ctx.args.message,
        device_ids=tuple(_device(d) for d in ctx.args.device),
        data_encoding=ctx.args.encoding,
    )
    request.validate()
    settings = ctx.settings(credentials=True, accounts=False)
    with _api_client(settings) as api:
        result = api.sms.send_sms_to_device(request)
    ctx.print(json.dumps({"requestId": result.request_id}))
    return EXIT_OK


def cmd_start_delivery(ctx: _Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    with _api_client(settings) as api:
        result = api.sms.start_queued_sms_delivery(account)
    ctx.print(json.dumps({"account": account, "success": result.success}))
    return EXIT_OK if result.success else EXIT_ACCOUNT_FAILED


def cmd_simulate(ctx: _Context) -> int:
    from sync_worker import simulator  # noqa: PLC0415

    args = ctx.args
    accounts = [
        config.validate_account_name(a.strip(), "--accounts") for a in args.accounts.split(",") if a.strip()
    ]
    logs.configure(ctx.env.get("SYNC_LOG_FORMAT", "auto") or "auto", "INFO", ctx.err)
    sim = simulator.Simulator(simulator.SimConfig(host=args.host, port=args.port, block_size=args.block_size))
    sim.start()
    try:
        for i, account in enumerate(accounts):
            sim.seed(account, args.seed_messages, seed=i + 1)
        cfg = sim.config
        ctx.print(f"ThingSpace simulator listening on {sim.base_url}")
        ctx.print(f"seeded {args.seed_messages} messages on each of: {', '.join(accounts)}")
        ctx.print("point the worker at it with:")
        ctx.print(f"  export THINGSPACE_BASE_URL={sim.base_url} THINGSPACE_ALLOW_INSECURE_LOOPBACK=1")
        ctx.print(f"  export THINGSPACE_CLIENT_ID={cfg.client_id} THINGSPACE_USERNAME={cfg.username}")
        # The simulator's credentials are fixed, public test values: printing them is the point
        # (ctx.print would scrub them, since every Secret registers its value).
        print(
            f"  export THINGSPACE_CLIENT_SECRET={shlex.quote(_reveal(cfg.client_secret))} "
            f"THINGSPACE_PASSWORD={shlex.quote(_reveal(cfg.password))}",
            file=ctx.out,
            flush=True,
        )
        ctx.print(f"  export SYNC_ACCOUNTS={','.join(accounts)}")
        ctx.print("Ctrl-C stops it.")
        stop = threading.Event()
        with signals.stop_on_signals(stop):
            stop.wait()
    finally:
        sim.stop()
    return EXIT_OK


def _reveal(value: Any) -> str:
    return value.reveal() if isinstance(value, secret.Secret) else str(value)


def cmd_demo(ctx: _Context) -> int:
    from sync_worker import demo  # noqa: PLC0415

    return demo.run(out=ctx.out)


# --- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sync-worker",
        description="Keeps a Postgres copy of every SMS that IoT devices send through Verizon ThingSpace.",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='TOML file with per-account settings ([accounts."NAME"] interval_seconds, jitter_seconds)',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[_Context], int], help_text: str, parent: Any = sub) -> Any:
        p = parent.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=environment_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    add("migrate", cmd_migrate, "create or upgrade the database schema (safe to run concurrently)")
    add("run", cmd_run, "run the daemon: sync every account on its interval until SIGTERM/SIGINT")
    p = add("once", cmd_once, "one pass over the accounts (each drained to its final block), then exit")
    p.add_argument("--account", action="append", metavar="A", help="only this account (repeatable)")
    p = add("status", cmd_status, "per account: cursor, last success, lag, rows, last error")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    cursor = sub.add_parser("cursor", help="show or reset the stored history cursors")
    cursor_sub = cursor.add_subparsers(dest="cursor_command", metavar="ACTION", required=True)
    p = add("show", cmd_cursor_show, "print the stored cursor of each account", cursor_sub)
    p.add_argument("--account", action="append", metavar="A", help="only this account (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "reset", cmd_cursor_reset, "forget an account's cursor: the next sync starts at the head", cursor_sub
    )
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    auth = sub.add_parser("auth", help="the login lock-out guard")
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    p = add(
        "status",
        cmd_auth_status,
        "consecutive failed logins for the configured user (exit 4: tripped)",
        auth_sub,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "reset",
        cmd_auth_reset,
        "state that ThingSpace's failed-login count is zero again (after a good login or a vendor unlock)",
        auth_sub,
    )
    p.add_argument("--yes", action="store_true", help="confirm without a prompt (required off a terminal)")

    quarantine = sub.add_parser("quarantine", help="list, show and replay quarantined history blocks")
    q_sub = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    p = add("list", cmd_quarantine_list, "quarantined blocks not resolved yet (data on stdout)", q_sub)
    p.add_argument("--account", metavar="A", help="only this account")
    p.add_argument("--all", action="store_true", help="resolved blocks too")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("show", cmd_quarantine_show, "one quarantined block", q_sub)
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--body", type=Path, metavar="FILE", help="write the exact kept bytes to FILE")
    p = add(
        "replay",
        cmd_quarantine_replay,
        "re-read kept blocks with the current code and store their messages (exit 5: some still unreadable)",
        q_sub,
    )
    p.add_argument("id", type=int, nargs="*", metavar="ID", help="default: every unresolved block")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("send", cmd_send, "send an SMS to devices (never retried: a retry could send it twice)")
    p.add_argument("--account", required=True, metavar="A")
    p.add_argument("--device", required=True, action="append", metavar="KIND:ID", help="repeatable")
    p.add_argument("--message", required=True, metavar="TEXT")
    p.add_argument(
        "--encoding", default="7-bit", choices=["7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA"]
    )
    p = add(
        "start-delivery", cmd_start_delivery, "ask ThingSpace to push the account's queue to its callback URL"
    )
    p.add_argument("--account", required=True, metavar="A")

    p = add(
        "simulate", cmd_simulate, "run the ThingSpace simulator (for trying the worker without an account)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8480)
    p.add_argument("--seed-messages", type=int, default=1000, metavar="N", help="per account")
    p.add_argument("--accounts", default="0252012345-00001,0252012345-00002", metavar="A,B,...")
    p.add_argument("--block-size", type=int, default=100, metavar="N")
    add("demo", cmd_demo, "what `make run` does: simulator + embedded Postgres, one pass, status, a query")
    return parser


def main(argv: Sequence[str] | None = None, *, env: dict[str, str] | None = None) -> int:
    """Run one command; returns the exit code (see ``EXIT_CODES``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors and 0 after --help.
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
    ctx = _Context(args, dict(os.environ) if env is None else env, sys.stdout, sys.stderr)
    try:
        return int(args.func(ctx))
    except errors.SyncWorkerError as exc:
        code = exit_code_for(exc)
        if ctx.logging:
            logs.get_logger(__name__).error(
                "command_failed", error=str(exc), kind=type(exc).__name__, exit_code=code
            )
        print(f"sync-worker: error: {secret.scrub(str(exc))}", file=ctx.err, flush=True)
        return code
    except KeyboardInterrupt:
        print("sync-worker: interrupted", file=ctx.err, flush=True)
        return EXIT_INTERRUPTED
