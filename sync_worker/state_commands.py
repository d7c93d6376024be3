"""The operator's commands on what the database holds: cursors, accounts, retention, the quarantine
and the callbacks kept for their unknown shape. Each is given a ``commands.Context`` (see
``commands``) and returns a code from ``exitcodes``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from sync_worker import (
    accounts,
    app,
    commands,
    config,
    errors,
    exitcodes,
    logs,
    quarantine,
    report,
    retention,
    status,
    store,
)


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


def cmd_cursor_show(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    for name in ctx.args.account or ():
        config.validate_account_name(name, "--account")
    with app.connection(settings) as conn:
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


def cmd_cursor_reset(ctx: commands.Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    commands.can_confirm(ctx, "cursor reset")
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
        _check_known(conn, settings, account, "--account")
    if not commands.confirm(
        ctx,
        f"cursor reset forgets the stored cursor of {account}: its next sync restarts at the head of "
        "the queue (the current block is fetched again and deduplicated; nothing is lost).",
        f"Forget the stored cursor of {account}?",
        "cursor reset",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with app.connection(settings) as conn:
        # Under the account's run lock: a drain running now would write its next token over the reset.
        accounts.reset_cursor(conn, account, "operator: sync-worker cursor reset")
    logs.get_logger(__name__).warning("cursor_reset", account=account)
    ctx.print(f"{account}: cursor cleared; the next sync starts at the head of the queue")
    return exitcodes.OK


def cmd_retention(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    days = ctx.args.days if ctx.args.days is not None else settings.retention_days
    if days is None or days < 1:
        raise errors.ValidationError("no retention window: set SYNC_RETENTION_DAYS or pass --days N (N >= 1)")
    if ctx.args.batch < 1:
        raise errors.ValidationError("--batch must be at least 1")
    summary: dict[str, object] = {"dry_run": not ctx.args.apply, "days": days}
    with app.connection(settings) as conn:
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


def cmd_accounts_list(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
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


def cmd_accounts_forget(ctx: commands.Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    commands.can_confirm(ctx, "accounts forget")
    settings = ctx.settings(credentials=False, accounts=False)
    if account in settings.account_names and not ctx.args.even_if_configured:
        raise errors.ValidationError(
            f"account {account} is still configured (SYNC_ACCOUNTS / --config): the next run would "
            "start it again at the head of the queue. Remove it from the configuration first, or "
            "pass --even-if-configured"
        )
    with app.connection(settings) as conn:
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
    if not commands.confirm(
        ctx,
        f"accounts forget removes account {account} from the database: {what}.{kept} A later sync of "
        "it starts at the head of the queue.",
        f"Forget account {account}?",
        "accounts forget",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with app.connection(settings) as conn:
        removed = accounts.forget(conn, account, data=data, even_if_served=bool(ctx.args.even_if_configured))
    logs.get_logger(__name__).warning("account_forgotten", **dataclasses.asdict(removed))
    ctx.print(json.dumps(dataclasses.asdict(removed), sort_keys=True))
    return exitcodes.OK


def cmd_quarantine_list(ctx: commands.Context) -> int:
    account = ctx.args.account
    if account is not None:
        config.validate_account_name(account, "--account")
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
        blocks = status.list_quarantine(conn, account, include_resolved=ctx.args.all)
    rows = [report.quarantine_dict(b) for b in blocks]
    if ctx.args.json:
        ctx.print(json.dumps({"quarantined": report.jsonable(rows)}, sort_keys=True))
    elif rows:
        ctx.print(report.table(rows, report.QUARANTINE_COLUMNS))
    else:
        ctx.print("(nothing quarantined)" if not ctx.args.all else "(no quarantined blocks)")
    return exitcodes.OK


def cmd_quarantine_show(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
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


def cmd_quarantine_replay(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    log = logs.get_logger(__name__)
    results = []
    with app.connection(settings) as conn:
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


def cmd_callbacks_kept(ctx: commands.Context) -> int:
    settings = ctx.settings(credentials=False, accounts=False)
    with app.connection(settings) as conn:
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
