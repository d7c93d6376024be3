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
import dataclasses
import json
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

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
    models,
    quarantine,
    report,
    retention,
    secret,
    signals,
    status,
    store,
)

if TYPE_CHECKING:
    from sync_worker import metrics

# The modules only some commands need (the scheduler, Prometheus, the HTTP servers, the simulator)
# are imported inside those commands: every `once` of a cron job would pay their import otherwise.

# The Pushgateway job of `once` (the daemon is scraped instead); alert rules select on it.
PUSH_JOB = "thingspace-sms-sync-once"


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


@contextlib.contextmanager
def _connection(settings: config.Settings, *, check_schema: bool = True) -> Iterator[store.Connection]:
    with app.connector(settings)() as conn:
        if check_schema:
            migrations.check_schema(conn)
        yield conn


def cmd_migrate(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    if ctx.args.create_database:
        created = db.create_database(
            settings.database_url, failure=f"SYNC_DATABASE_URL: {db.describe(settings.database_url)}"
        )
        if created is not None:
            logs.get_logger(__name__).info("database_created", database=created)
    with _connection(settings, check_schema=False) as conn:
        applied = migrations.migrate(conn)
    logs.get_logger(__name__).info("migrated", applied=list(applied))
    ctx.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return exitcodes.OK


def cmd_run(ctx: Context) -> int:
    settings = ctx.settings(credentials=True, accounts=True, daemon=True)
    # SIGTERM stops the daemon cleanly from here on, also while it starts (its probes answer before
    # its loops run): the signal sets the stop event instead of ending the process.
    stop = threading.Event()
    with signals.stop_on_signals(stop):
        code = _serve_daemon(settings, stop)
    if code != exitcodes.OK:
        # Account runs still busy after the shutdown timeout sit in threads that cannot be
        # stopped (and interpreter exit would join them); leaving without joining them is
        # how the timeout is honoured.
        _flush_and_exit(code, ctx.out, ctx.err)
    return code


def _serve_daemon(settings: config.Settings, stop: threading.Event) -> int:
    from sync_worker import health, metrics, scheduler  # noqa: PLC0415  # see the imports above

    with _connection(settings):
        pass
    m = metrics.Metrics()
    liveness = scheduler.Liveness()
    server = None
    if settings.metrics_port is not None:
        # Each readiness probe also refreshes the tripped gauge from the database.
        login_guard = app.login_guard(settings, app.connector(settings), on_state=m.login_guard)

        def database_ready() -> None:
            with _connection(settings):
                pass

        def guard_ready() -> None:
            guard_status = login_guard.observe(app.current_fingerprint(settings))
            if guard_status.problem is not None:
                raise errors.LoginGuardTrippedError(guard_status.problem)

        server = health.HealthServer(
            settings.metrics_port,
            m,
            live=liveness.check,
            ready=health.checks(
                [
                    ("database", database_ready),
                    ("login_guard", guard_ready),
                    ("claims", liveness.check_claims),
                ]
            ),
        ).start()
    try:
        return app.run_daemon(
            settings, metrics=m, liveness=liveness, stop_event=stop, install_signal_handlers=False
        )
    finally:
        if server is not None:
            server.stop()


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
    stop = threading.Event()
    exported = settings.metrics_textfile is not None or settings.metrics_pushgateway is not None
    pass_metrics: metrics.Metrics | None = None
    progress = sys.stderr.isatty()
    if progress or exported:
        from sync_worker import metrics  # noqa: PLC0415  # see the imports above

        pass_metrics = (
            metrics.ProgressMetrics(sys.stderr, one_pass=True) if progress else metrics.Metrics(one_pass=True)
        )
    with signals.stop_on_signals(stop):
        result = app.sync_once(settings, accounts=only or None, stop_event=stop, metrics=pass_metrics)
    if exported and pass_metrics is not None:
        _export_pass_metrics(settings, pass_metrics)
    # The summary is the last stdout line so cron wrappers can `tail -1 | jq`.
    ctx.print(json.dumps(report.jsonable(result.summary()), separators=(",", ":"), sort_keys=True))
    return int(result.exit_code)


def _export_pass_metrics(settings: config.Settings, pass_metrics: metrics.Metrics) -> None:
    """The pass's metrics to the textfile and/or the Pushgateway. A failure is logged, not fatal:
    the messages are stored, and the alert on the age of the last pass notices the silence."""
    log = logs.get_logger(__name__)
    if settings.metrics_textfile is not None:
        try:
            pass_metrics.write_textfile(settings.metrics_textfile)
        except errors.SyncWorkerError as exc:
            log.error("metrics_textfile_failed", error=str(exc))
    if settings.metrics_pushgateway is not None:
        try:
            pass_metrics.push(settings.metrics_pushgateway, job=PUSH_JOB, instance=socket.gethostname())
        except errors.SyncWorkerError as exc:
            log.error("metrics_push_failed", error=str(exc))


def cmd_status(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        rows = report.status_rows(conn)
    if not ctx.args.check:
        if ctx.args.json:
            ctx.print(json.dumps({"accounts": report.jsonable(rows)}, sort_keys=True))
        else:
            ctx.print(report.status_table(rows))
        return exitcodes.OK
    problems = report.status_problems(rows, settings.account_names, stale_after=ctx.args.stale_after)
    guard_problem = _guard_problem(settings)
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


def _guard_problem(settings: config.Settings) -> str | None:
    """Why the configured user cannot log in now, or None (also when no user is configured)."""
    if not settings.username:
        return None
    login_guard = app.login_guard(settings, app.connector(settings))
    if settings.client_id and settings.client_secret and settings.password:
        return login_guard.status(app.current_fingerprint(settings)).problem
    # No credentials here (a monitoring host): judge by the recorded count alone.
    state = login_guard.state()
    if state.failures >= settings.login_guard_threshold:
        return f"login guard tripped: {state.failures} failed logins in a row recorded"
    return None


def _confirm(ctx: Context, statement: str, question: str, command: str) -> bool:
    """Say what the command is about to do (stderr), then take ``--yes`` or a terminal's yes.

    False: the operator declined. Off a terminal without ``--yes``: ``errors.ConfigError``.
    """
    ctx.err.write(statement + "\n")
    ctx.err.flush()
    if ctx.args.yes:
        return True
    _can_confirm(ctx, command)
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _can_confirm(ctx: Context, command: str) -> None:
    """Refuse before any work when no confirmation can come: no --yes and no terminal to ask on."""
    if not ctx.args.yes and not sys.stdin.isatty():
        raise errors.ConfigError(f"{command}: pass --yes to confirm when not on a terminal")


def _check_known(conn: store.Connection, settings: config.Settings, name: str, where: str) -> str:
    """``name`` if it is a valid account name that is configured or known to the database.

    A mistyped name must not answer "head of queue" nor create a row that ``status`` then
    shows forever.
    """
    config.validate_account_name(name, where)
    if name in settings.account_names or accounts.is_known(conn, name):
        return name
    raise errors.ValidationError(
        f"{where}: account {name} is neither configured (SYNC_ACCOUNTS / --config) nor known to the "
        "database; `sync-worker accounts list` shows the known ones"
    )


def cmd_cursor_show(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    for name in ctx.args.account or ():
        config.validate_account_name(name, "--account")
    with _connection(settings) as conn:
        if ctx.args.account:
            names = [_check_known(conn, settings, name, "--account") for name in ctx.args.account]
        else:
            names = list(settings.account_names) or [a.account_name for a in accounts.known(conn)]
        cursors = {name: store.get_cursor(conn, name) for name in names}
    if ctx.args.json:
        ctx.print(json.dumps(cursors, sort_keys=True))
    else:
        for name, token in cursors.items():
            ctx.print(f"{name}\t{token if token is not None else '(head of queue)'}")
    return exitcodes.OK


def cmd_cursor_reset(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    _can_confirm(ctx, "cursor reset")
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        _check_known(conn, settings, account, "--account")
    if not _confirm(
        ctx,
        f"cursor reset forgets the stored cursor of {account}: its next sync restarts at the head of "
        "the queue (the current block is fetched again and deduplicated; nothing is lost).",
        f"Forget the stored cursor of {account}?",
        "cursor reset",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with _connection(settings) as conn:
        # Under the account's run lock: a drain running now would write its next token over the reset.
        accounts.reset_cursor(conn, account, "operator: sync-worker cursor reset")
    logs.get_logger(__name__).warning("cursor_reset", account=account)
    ctx.print(f"{account}: cursor cleared; the next sync starts at the head of the queue")
    return exitcodes.OK


def cmd_retention(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    days = ctx.args.days if ctx.args.days is not None else settings.retention_days
    if days is None or days < 1:
        raise errors.ValidationError("no retention window: set SYNC_RETENTION_DAYS or pass --days N (N >= 1)")
    if ctx.args.batch < 1:
        raise errors.ValidationError("--batch must be at least 1")
    summary: dict[str, object] = {"dry_run": not ctx.args.apply, "days": days}
    with _connection(settings) as conn:
        if not ctx.args.apply:
            summary.update(retention.plan(conn, days).as_dict())
        else:
            outcome = retention.run(conn, days, batch=ctx.args.batch)
            if outcome is None:
                raise errors.StoreError(
                    "another retention run is in progress (a daemon's daily job or another --apply); "
                    "nothing was removed: try again when it has finished"
                )
            todo, done = outcome
            summary.update({**todo.as_dict(), **done.as_dict()})
            logs.get_logger(__name__).info("retention_applied", days=days, **done.as_dict())
    # The plan (and what was done) is the command's data: one JSON object on stdout.
    ctx.print(json.dumps(summary, sort_keys=True))
    return exitcodes.OK


def cmd_accounts_list(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        found = {a.account_name: a for a in accounts.known(conn)}
    rows = []
    for name in sorted(set(found) | set(settings.account_names)):
        known = found.get(name)
        rows.append(
            {
                "account_name": name,
                "configured": name in settings.account_names,
                "in_database": known is not None,
                "cursor_present": known is not None and known.cursor_present,
                "last_success_at": known.last_success_at if known else None,
                "last_run_at": known.last_run_at if known else None,
                "runs": known.runs if known else 0,
            }
        )
    if ctx.args.json:
        ctx.print(json.dumps({"accounts": report.jsonable(rows)}, sort_keys=True))
    elif rows:
        ctx.print(report.table(rows, report.ACCOUNT_COLUMNS))
    else:
        ctx.print("(no accounts configured or known to the database)")
    return exitcodes.OK


def cmd_accounts_forget(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    _can_confirm(ctx, "accounts forget")
    settings = ctx.settings(credentials=False, accounts=False)
    if account in settings.account_names and not ctx.args.even_if_configured:
        raise errors.ValidationError(
            f"account {account} is still configured (SYNC_ACCOUNTS / --config): the next run would "
            "start it again at the head of the queue. Remove it from the configuration first, or "
            "pass --even-if-configured"
        )
    with _connection(settings) as conn:
        _check_known(conn, settings, account, "--account")
        if not ctx.args.even_if_configured:
            # This shell's configuration may lack the account a running daemon serves: ask the
            # database which replicas serve it (asked again under the lock by accounts.forget).
            accounts.refuse_if_served(conn, account)
    data = bool(ctx.args.with_history)
    what = "its cursor, its run records and its failure streak" + (
        ", AND every stored message (sms_history) and quarantined block of it" if data else ""
    )
    kept = (
        "" if data else " Its stored messages and quarantined blocks are kept (--with-history removes them)."
    )
    if not _confirm(
        ctx,
        f"accounts forget removes account {account} from the database: {what}.{kept} A later sync of "
        "it starts at the head of the queue.",
        f"Forget account {account}?",
        "accounts forget",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with _connection(settings) as conn:
        removed = accounts.forget(conn, account, data=data, even_if_served=bool(ctx.args.even_if_configured))
    logs.get_logger(__name__).warning("account_forgotten", **dataclasses.asdict(removed))
    ctx.print(json.dumps(dataclasses.asdict(removed), sort_keys=True))
    return exitcodes.OK


def cmd_quarantine_list(ctx: Context) -> int:
    account = ctx.args.account
    if account is not None:
        config.validate_account_name(account, "--account")
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        blocks = status.list_quarantine(conn, account, include_resolved=ctx.args.all)
    rows = [report.quarantine_dict(b) for b in blocks]
    if ctx.args.json:
        ctx.print(json.dumps({"quarantined": report.jsonable(rows)}, sort_keys=True))
    elif rows:
        ctx.print(report.table(rows, report.QUARANTINE_COLUMNS))
    else:
        ctx.print("(nothing quarantined)" if not ctx.args.all else "(no quarantined blocks)")
    return exitcodes.OK


def cmd_quarantine_show(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        found = status.show_quarantine(conn, ctx.args.id)
    if found is None:
        raise errors.ValidationError(f"no quarantined block with id {ctx.args.id}")
    block, extra = found
    shown = {**report.quarantine_dict(block), **extra}
    if ctx.args.body is not None:
        assert block.body is not None  # noqa: S101  # for mypy: show_quarantine loads the body
        _write_body(ctx.args.body, block.body, replace=ctx.args.force)
        shown["body_written_to"] = str(ctx.args.body)
    if ctx.args.json:
        ctx.print(json.dumps(report.jsonable(shown), sort_keys=True))
    else:
        width = max(len(k) for k in shown)
        for key, value in shown.items():
            ctx.print(f"{key.ljust(width)}  {report.jsonable(value) if value is not None else '-'}")
    return exitcodes.OK


def _write_body(path: Path, data: bytes, *, replace: bool) -> None:
    """``data`` into a new file at ``path``; an existing name only with ``replace``.

    Never through a symlink: the file is created exclusively (O_EXCL refuses any existing name,
    a dangling symlink included), or, with ``replace``, written beside it and renamed over the
    name itself. A path that cannot be written is a usage error, not a traceback.
    """
    try:
        if not replace:
            with open(path, "xb") as new:  # O_CREAT | O_EXCL
                new.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as new:
                new.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except FileExistsError:
        raise errors.ValidationError(
            f"--body {path}: exists already (nothing written); pass --force to replace it"
        ) from None
    except OSError as exc:
        raise errors.ValidationError(f"--body {path}: {exc.strerror or exc} (nothing written)") from None


def cmd_quarantine_replay(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    log = logs.get_logger(__name__)
    results = []
    with _connection(settings) as conn:
        ids = list(ctx.args.id) or status.unresolved_quarantine_ids(conn)
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
        ctx.print(json.dumps({"replayed": report.jsonable(results)}, sort_keys=True))
    elif results:
        ctx.print(
            report.table(
                [dataclasses.asdict(r) for r in results],
                ("quarantine_id", "account_name", "messages", "inserted", "resolved", "problem"),
            )
        )
    else:
        ctx.print("(nothing to replay)")
    return exitcodes.OK if all(r.resolved for r in results) else exitcodes.QUARANTINED


def cmd_auth_status(ctx: Context) -> int:
    settings = ctx.settings(credentials=True, accounts=False)
    with _connection(settings):
        pass
    guard_status = app.login_guard(settings, app.connector(settings)).status(
        app.current_fingerprint(settings)
    )
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
            return exitcodes.CONFIG
    login_guard.reset()
    ctx.print(
        f"login guard reset for user {settings.username} (was {recorded} failed in a row); "
        "running workers log in again at their next run"
    )
    return exitcodes.OK


@contextlib.contextmanager
def _api_client(settings: config.Settings) -> Iterator[Any]:
    connect = app.connector(settings)
    with connect():
        pass
    with app.api_client(settings, connect) as (api, _):
        yield api


def _device(text: str) -> Any:
    kind, sep, ident = text.partition(":")
    if not sep or not kind or not ident:
        raise errors.ValidationError(f"--device {text!r} must be KIND:ID, e.g. imei:990000862471854")
    device = models.DeviceId(id=ident, kind=kind.lower())
    device.validate()
    return device


def cmd_send(ctx: Context) -> int:
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
    # The audit trail of who sent what where; the text stays out of logs (it may be a command or a PIN).
    logs.get_logger(__name__).info(
        "sms_sent",
        audit=True,
        request_id=result.request_id,
        account=request.account_name,
        devices=len(request.device_ids),
        encoding=request.data_encoding,
        username=settings.username,
    )
    ctx.print(json.dumps({"requestId": result.request_id}))
    return exitcodes.OK


def cmd_start_delivery(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    _can_confirm(ctx, "start-delivery")
    settings = ctx.settings(credentials=True, accounts=False)
    if not _confirm(
        ctx,
        f"start-delivery asks ThingSpace to push the whole SMS queue of account {account} to the "
        "callback URL registered for it. Pushed messages leave the queue this worker reads: they "
        "reach sms_history only if the callback's receiver stores them.",
        f"Divert the queue of {account} to its callback?",
        "start-delivery",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with _api_client(settings) as api:
        result = api.sms.start_queued_sms_delivery(account)
    logs.get_logger(__name__).warning(
        "queued_delivery_started", audit=True, account=account, success=result.success
    )
    ctx.print(json.dumps({"account": account, "success": result.success}))
    return exitcodes.OK if result.success else exitcodes.FAILED


def _listener_url(ctx: Context, settings: config.Settings, account: str) -> str:
    url = ctx.args.url or app.listener_url(settings, account)
    if not url:
        raise errors.ConfigError(
            "SYNC_CALLBACK_URL (or --url) is required: the receiver's public https:// address"
        )
    return str(url)


def cmd_callbacks_list(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    with _api_client(settings) as api:
        listeners = api.callbacks.list_registered_callbacks(account)
    # The API returns each listener's password in clear text: only whether one is set is shown.
    rows = [
        {
            "account": item.account_name,
            "service": item.service_name,
            "url": item.url,
            "username": item.username,
            "password": "(set)" if item.password else "(none)",
        }
        for item in listeners
    ]
    if ctx.args.json:
        ctx.print(json.dumps({"listeners": rows}, sort_keys=True))
    elif rows:
        ctx.print(report.table(rows, ("account", "service", "url", "username", "password")))
    else:
        ctx.print(f"(no callback listener registered for {account})")
    return exitcodes.OK


def cmd_callbacks_register(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    url = _listener_url(ctx, settings, account)
    if not settings.callback_username or not settings.callback_password:
        raise errors.ConfigError(
            "SYNC_CALLBACK_USERNAME and SYNC_CALLBACK_PASSWORD (or _FILE) are required: the receiver "
            "accepts only callbacks carrying them"
        )
    request = models.RegisterCallbackRequest(
        models.SMS_CALLBACK_SERVICE, url, settings.callback_username, settings.callback_password
    )
    request.validate(allow_insecure_loopback=settings.allow_insecure_loopback)
    with _api_client(settings) as api:
        existing = [
            item
            for item in api.callbacks.list_registered_callbacks(account)
            if item.service_name == models.SMS_CALLBACK_SERVICE
        ]
        foreign = [item for item in existing if item.url != url]
        if foreign and not ctx.args.replace:
            # One listener per service per account: registering silently would cut off
            # whatever integration receives these callbacks today.
            raise errors.ValidationError(
                f"{account} already has an {models.SMS_CALLBACK_SERVICE} listener at {foreign[0].url}, "
                f"not this receiver ({url}); registering would replace it and break whatever uses it. "
                "Pass --replace to replace it."
            )
        api.callbacks.register_callback(account, request)
    logs.get_logger(__name__).info(
        "callback_registered", account=account, url=url, replaced=foreign[0].url if foreign else None
    )
    ctx.print(
        json.dumps(
            {
                "account": account,
                "service": models.SMS_CALLBACK_SERVICE,
                "url": url,
                "replaced": foreign[0].url if foreign else None,
                "updated": bool(existing) and not foreign,
            },
            sort_keys=True,
        )
    )
    return exitcodes.OK


def cmd_callbacks_remove(ctx: Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    ours = ctx.args.url or app.listener_url(settings, account)
    with _api_client(settings) as api:
        existing = [
            item
            for item in api.callbacks.list_registered_callbacks(account)
            if item.service_name == models.SMS_CALLBACK_SERVICE
        ]
        if not existing:
            ctx.print(json.dumps({"account": account, "removed": None}))
            return exitcodes.OK
        url = existing[0].url
        if url != ours and not ctx.args.force:
            raise errors.ValidationError(
                f"the {models.SMS_CALLBACK_SERVICE} listener of {account} is at {url}, not this receiver "
                f"({ours or 'SYNC_CALLBACK_URL unset'}); removing it would break whatever uses it. "
                "Pass --force to remove it anyway."
            )
        api.callbacks.deregister_callback(account, models.SMS_CALLBACK_SERVICE)
    logs.get_logger(__name__).info("callback_removed", account=account, url=url)
    ctx.print(json.dumps({"account": account, "removed": url}))
    return exitcodes.OK


def cmd_callbacks_kept(ctx: Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with _connection(settings) as conn:
        rows = status.unknown_callbacks(conn, ctx.args.account)
    if ctx.args.json:
        ctx.print(json.dumps({"kept": report.jsonable(rows)}, sort_keys=True))
    elif rows:
        ctx.print(
            report.table(
                rows, ("id", "account_name", "problem", "body_size", "first_stored_at", "seen_count")
            )
        )
    else:
        ctx.print("(no callback of an unknown shape)")
    return exitcodes.OK


def cmd_receive(ctx: Context) -> int:
    from sync_worker import callback_metrics, health, metrics  # noqa: PLC0415  # see the imports above

    settings = ctx.settings(credentials=False, accounts=True, daemon=True)
    with _connection(settings):
        pass
    m = metrics.Metrics()
    connect = app.connector(settings)
    receiver = app.callback_receiver(settings, connect, callback_metrics.CallbackMetrics(m.registry))
    stop = threading.Event()
    server = None

    def database_ready() -> None:
        with _connection(settings):
            pass

    with signals.stop_on_signals(stop), receiver:
        if settings.metrics_port is not None:
            server = health.HealthServer(
                settings.metrics_port,
                m,
                live=receiver.live,
                ready=health.checks([("database", database_ready)]),
            ).start()
        try:
            stop.wait()
        finally:
            if server is not None:
                server.stop()
    logs.get_logger(__name__).info("callback_receiver_stopped")
    return exitcodes.OK


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
    ctx.configure_logs(ctx.env.get("SYNC_LOG_FORMAT", "auto") or "auto", "INFO", ctx.err)
    simulator.serve(
        args.host,
        args.port,
        args.seed_messages,
        accounts,
        block_size=args.block_size,
        out=ctx.out,
    )
    return exitcodes.OK


def cmd_demo(ctx: Context) -> int:
    from sync_worker import demo  # noqa: PLC0415  # see the imports above

    if ctx.args.push:
        return demo.run_push(out=ctx.out)
    return demo.run(out=ctx.out)
