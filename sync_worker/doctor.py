"""``sync-worker doctor``: will this work, and what does the real API send us? Asked before the daemon runs.

One verdict per check (``ok``, ``warn``, ``fail``, or ``skipped`` with the reason): the
configuration; which database (host, port, name, user: never the password) and whether it answers;
the schema version; OAuth; the session login *through the login guard*; the host's clock against
the API's ``Date`` header; for each account the head block of its history queue, read and
summarised; the callback listeners registered for each account; whether ``SYNC_CALLBACK_URL``
resolves.

What it may change, and why nothing else:

* **Nothing is acknowledged.** The head block is one ``GET .../history`` without ``next``
  (``list_devices_sms_messages(account)``): no request carrying a ``next`` token is ever sent.
  The page's ``gate.Ticket`` is left unsettled and never handed to ``gate.release``, so even a
  mistaken later use of it would be refused by the gate; ``Ticket.acknowledge_unstored`` is not
  used (``tests/unit/test_gate.py`` keeps the package free of it, doctor included, and
  ``tests/unit/test_doctor.py`` checks this module's calls).
* **The login guard counts the login.** No login without the guard: it is counted before it is
  sent and its verdict recorded (``login_guard`` row), which is how a refused login can never be
  the one that locks the user. A guard that refuses (or cannot be read) means no login.
* **A final block handed over is stored.** Whether the platform dequeues a final (200) block when
  it hands it over, or at the next read without ``next``, is unknown (docs: the API facts); either
  way a final block read here would be gone before the daemon saw it. So a final block with
  messages is committed exactly as a sync run would (``store.commit_block`` under the account's
  lock, one ``sync_run`` row), and an unreadable final answer is kept in the quarantine. A 202 head
  block stays queued and nothing is written for it. The account's advisory lock is held while
  reading, so doctor never reads a head a running sync is between reading and committing;
  ``--no-history`` skips the head blocks altogether.
* Never an SMS, a ``startCallbacks``, a callback registration or a migration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import socket
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from sync_worker import (
    app,
    client,
    clock_skew,
    config,
    db,
    doctor_report,
    errors,
    exitcodes,
    guard,
    head_summary,
    migrations,
    models,
    secret,
    status,
    store,
)


def config_failed(exc: errors.SyncWorkerError) -> doctor_report.Report:
    """The report when the settings cannot be loaded at all: nothing else can be checked."""
    found = doctor_report.Report()
    found.add(doctor_report.Check("configuration", "fail", str(exc), code=exitcodes.CONFIG))
    return found


def examine(
    settings: config.Settings,
    env: Mapping[str, str],
    config_file: Path | None = None,
    *,
    history: bool = True,
) -> doctor_report.Report:
    """Run every check against ``settings`` (loaded without requiring credentials or accounts)."""
    found = doctor_report.Report()
    credentials = _configuration(found, settings, env, config_file)
    connect = app.connector(settings)
    db_ok = _database(found, settings, env, connect)
    schema_ok = db_ok and _schema(found, connect)
    if not db_ok:
        found.add(doctor_report.Check("schema", "skipped", "the database cannot be reached"))
    dates = clock_skew.DateSamples()
    if not credentials:
        reason = "no ThingSpace credentials configured"
        for name in ("oauth", "login", "clock"):
            found.add(doctor_report.Check(name, "skipped", reason))
        _skip_accounts(found, settings, reason)
    else:
        with dates.session() as http, _client(settings, connect, http) as (api, the_guard):
            logged_in = _oauth(found, api) and _login(found, settings, api, the_guard, usable=schema_ok)
            if not logged_in:
                _skip_accounts(found, settings, "no session (see oauth and login)")
            else:
                deadline = time.monotonic() + settings.run_budget_seconds
                for account in settings.account_names:
                    if not history:
                        found.add(
                            doctor_report.Check("head_block", "skipped", "--no-history", account=account)
                        )
                    else:
                        found.add(_head_block(api, connect, account, deadline))
                for account in settings.account_names:
                    found.add(_callbacks(api, settings, account))
        found.checks.insert(_index_after(found, "login"), dates.check())
    found.add(callback_url_check(settings))
    return found


def _configuration(
    found: doctor_report.Report, settings: config.Settings, env: Mapping[str, str], config_file: Path | None
) -> bool:
    """What the daemon would refuse (``run`` requires credentials and accounts), named; True when
    the credentials are there for the API checks."""
    missing: list[str] = []
    credentials = True
    try:
        config.load(env, config_file, require_credentials=True, require_accounts=False)
    except errors.ConfigError as exc:
        missing.append(str(exc))
        credentials = False
    if not settings.account_names:
        missing.append(
            'SYNC_ACCOUNTS is required by run, receive and once (or [accounts."NAME"] tables in --config)'
        )
    detail = {
        "base_url": settings.base_url,
        "accounts": list(settings.account_names),
        "database_configured_by": _database_source(env),
        "callback_url": settings.callback_url or None,
        "login_guard_threshold": settings.login_guard_threshold,
    }
    if missing:
        found.add(
            doctor_report.Check(
                "configuration", "fail", "; ".join(missing), detail=detail, code=exitcodes.CONFIG
            )
        )
    else:
        summary = f"valid: {settings.base_url}, {len(settings.account_names)} account(s), credentials set"
        found.add(doctor_report.Check("configuration", "ok", summary, detail=detail))
    return credentials


def _database_source(env: Mapping[str, str]) -> str:
    if env.get("SYNC_DATABASE_URL_FILE"):
        return "SYNC_DATABASE_URL_FILE"
    if env.get("SYNC_DATABASE_URL"):
        return "SYNC_DATABASE_URL"
    return "libpq PG* variables and defaults (SYNC_DATABASE_URL not set)"


def _database(
    found: doctor_report.Report,
    settings: config.Settings,
    env: Mapping[str, str],
    connect: db.ConnectionFactory,
) -> bool:
    try:
        with connect() as conn:
            info = conn.info
            version = int(info.server_version)
            where: dict[str, Any] = {
                "host": info.host,
                "port": info.port,
                "dbname": info.dbname,
                "user": info.user,
                "server_version": version,
            }
    except errors.SyncWorkerError as exc:
        found.add(doctor_report.Check("database", "fail", str(exc), code=exitcodes.DATABASE))
        return False
    # Named as every database error names it (db.describe); the detail is what the server reports.
    summary = f"{db.describe(settings.database_url)}, PostgreSQL {version // 10000}.{version % 10000}"
    verdict: doctor_report.Verdict = "ok"
    if not settings.database_url and not env.get("PGDATABASE"):
        # What libpq picked by itself (the database named like the user) is rarely the one meant.
        verdict = "warn"
        summary += "; no database configured explicitly (SYNC_DATABASE_URL and PGDATABASE unset)"
    where["configured_by"] = _database_source(env)
    found.add(doctor_report.Check("database", verdict, summary, detail=where))
    return True


def _schema(found: doctor_report.Report, connect: db.ConnectionFactory) -> bool:
    try:
        with connect() as conn:
            listed = migrations.status(conn)
    except errors.SyncWorkerError as exc:
        found.add(doctor_report.Check("schema", "fail", str(exc), code=exitcodes.DATABASE))
        return False
    shipped = [m for m in listed if m.checksum_matches is not None or m.applied_at is None]
    applied = [m.version for m in listed if m.applied_at is not None]
    missing = [m.version for m in listed if m.applied_at is None]
    edited = [m.version for m in listed if m.checksum_matches is False]
    unknown = [m.version for m in listed if m.applied_at is not None and m.checksum_matches is None]
    detail: dict[str, Any] = {
        "applied": applied,
        "missing": missing,
        "edited": edited,
        "newer_than_this_code": unknown,
        "latest_shipped": shipped[-1].version if shipped else None,
    }
    run_migrate = "run `sync-worker migrate` (doctor never migrates)"
    if edited:
        detail["state"] = "edited"
        summary = f"applied migration(s) {', '.join(edited)} differ from this code's files"
        found.add(doctor_report.Check("schema", "fail", summary, detail=detail, code=exitcodes.DATABASE))
        return False
    if not applied:
        detail["state"] = "missing"
        summary = f"missing: no migration applied; {run_migrate}"
        found.add(doctor_report.Check("schema", "fail", summary, detail=detail, code=exitcodes.DATABASE))
        return False
    if missing:
        detail["state"] = "outdated"
        summary = (
            f"outdated: {len(missing)} migration(s) missing ({', '.join(missing[:3])}...); {run_migrate}"
        )
        found.add(doctor_report.Check("schema", "fail", summary, detail=detail, code=exitcodes.DATABASE))
        return False
    detail["state"] = "current"
    if unknown:
        summary = (
            f"newer than this code: {', '.join(unknown)} applied by a newer version (readable by this one)"
        )
        found.add(doctor_report.Check("schema", "warn", summary, detail=detail))
        return True
    summary = f"current: {len(applied)} migrations applied (latest {applied[-1]})"
    found.add(doctor_report.Check("schema", "ok", summary, detail=detail))
    return True


@contextlib.contextmanager
def _client(
    settings: config.Settings, connect: db.ConnectionFactory, http: requests.Session
) -> Iterator[tuple[client.ThingSpaceClient, guard.LoginGuard]]:
    """The client and login guard as ``once`` builds them (``app``), on a session that notes ``Date``."""
    the_guard = app.login_guard(settings, connect)
    cfg = dataclasses.replace(app.client_config(settings, login_guard=the_guard), session=http)
    with client.ThingSpaceClient(cfg) as api:
        yield api, the_guard


def _oauth(found: doctor_report.Report, api: client.ThingSpaceClient) -> bool:
    try:
        api.fetch_bearer()
    except errors.SyncWorkerError as exc:
        found.add(
            doctor_report.Check(
                "oauth", "fail", f"no OAuth token: {_error(exc)}", code=exitcodes.for_error(exc)
            )
        )
        return False
    found.add(doctor_report.Check("oauth", "ok", "client credentials accepted: OAuth token issued"))
    return True


def _login(
    found: doctor_report.Report,
    settings: config.Settings,
    api: client.ThingSpaceClient,
    the_guard: guard.LoginGuard,
    *,
    usable: bool,
) -> bool:
    """The session login, only where the login guard allows it, and counted by it."""
    if not usable:
        found.add(
            doctor_report.Check(
                "login",
                "skipped",
                "not logging in: the login guard keeps its count in the database, which is not usable "
                "(see database and schema); a login it cannot count could be the one that locks the user",
            )
        )
        return False
    try:
        before = the_guard.status(app.current_fingerprint(settings))
    except errors.SyncWorkerError as exc:
        summary = f"the login guard cannot be read, so no login: {_error(exc)}"
        found.add(doctor_report.Check("login", "fail", summary, code=exitcodes.for_error(exc)))
        return False
    if before.blocked is not None:
        found.add(
            doctor_report.Check(
                "login",
                "fail",
                f"not logging in: login guard tripped: {before.blocked} (README: The login guard)",
                detail={"guard": before.as_dict()},
                code=exitcodes.AUTH,
            )
        )
        return False
    try:
        api.log_in(time.monotonic() + settings.run_budget_seconds)
    except errors.SyncWorkerError as exc:
        after = _guard_after(the_guard, settings)
        counted = "" if after is None else f" (login guard: {after.state.failures} failed in a row now)"
        found.add(
            doctor_report.Check(
                "login",
                "fail",
                f"session login {_login_outcome(exc)}: {_error(exc)}{counted}",
                detail={"guard": None if after is None else after.as_dict()},
                code=exitcodes.for_error(exc),
            )
        )
        return False
    found.add(
        doctor_report.Check(
            "login",
            "ok",
            f"session login as {settings.username} succeeded through the login guard "
            f"({before.state.failures} failed in a row before; 0 now)",
        )
    )
    return True


def _login_outcome(exc: errors.SyncWorkerError) -> str:
    if isinstance(exc, errors.LoginGuardTrippedError):
        return "refused by the login guard"
    if isinstance(exc, errors.LoginFailedError):
        return "refused by ThingSpace, counted by the login guard"
    if isinstance(exc, errors.RateLimitedError):
        return "throttled (not counted)"
    if isinstance(exc, errors.ApiError) and exc.operation == "oauth_token":
        return "not attempted (OAuth)"
    if isinstance(exc, errors.ApiError):
        return "outcome unknown, counted as failed by the login guard"
    return "not made"


def _guard_after(the_guard: guard.LoginGuard, settings: config.Settings) -> guard.GuardStatus | None:
    try:
        return the_guard.status(app.current_fingerprint(settings))
    except errors.SyncWorkerError:
        return None


def _skip_accounts(found: doctor_report.Report, settings: config.Settings, reason: str) -> None:
    for account in settings.account_names:
        found.add(doctor_report.Check("head_block", "skipped", reason, account=account))
    for account in settings.account_names:
        found.add(doctor_report.Check("callbacks", "skipped", reason, account=account))


def _index_after(found: doctor_report.Report, name: str) -> int:
    names = [c.name for c in found.checks]
    return names.index(name) + 1 if name in names else len(names)


# --- the head block ------------------------------------------------------------------


def _head_block(
    api: client.ThingSpaceClient, connect: db.ConnectionFactory, account: str, deadline: float
) -> doctor_report.Check:
    """Read the head block (no ``next``: nothing acknowledged) under the account's lock, and
    summarise it; a final block handed over is stored (see the module docstring)."""
    try:
        with connect() as conn:
            if not store.try_account_lock(conn, account):
                holder = status.lock_holder(conn, account)
                by = "" if holder is None else f" ({holder.describe()})"
                return doctor_report.Check(
                    "head_block",
                    "skipped",
                    f"a sync of this account holds its lock now{by}: not reading its head meanwhile",
                    account=account,
                )
            return _read_head(api, conn, account, deadline)
    except errors.SyncWorkerError as exc:
        return doctor_report.Check(
            "head_block", "fail", _error(exc), account=account, code=exitcodes.for_error(exc)
        )


def _read_head(
    api: client.ThingSpaceClient, conn: db.Connection, account: str, deadline: float
) -> doctor_report.Check:
    try:
        # The head of the queue: no `next`, so no block is acknowledged. The page's ticket is
        # never settled nor released.
        page = api.sms.list_devices_sms_messages(account, deadline=deadline)
    except (errors.MalformedBlockError, errors.UnreadableAnswerError) as exc:
        block = exc if isinstance(exc, errors.MalformedBlockError) else exc.block
        summary = head_summary.summarise(
            block.status or 0, block.body, has_token=block.next_token is not None
        )
        text = f"not readable as a block (it would be quarantined): {block.problem}"
        detail: dict[str, Any] = {"block": summary}
        if block.next_token is None:
            # A final answer, dequeued perhaps: its bytes are kept, as a sync keeps them.
            kept = _keep(conn, account, models.KeptBlock.from_error(block))
            detail["quarantine_id"] = kept
            text += f"; a final answer: its bytes are kept in the quarantine (id {kept})"
        return doctor_report.Check("head_block", "fail", text, account=account, detail=detail)
    summary = head_summary.summarise(page.status, page.body, has_token=page.next is not None)
    detail = {"block": summary}
    notes = head_summary.notes(summary)
    text = (
        f"{page.status}: {len(page.messages)} message(s), "
        + ("more waiting" if page.next is not None else "the final block")
        + (f"; {', '.join(notes)}" if notes else "")
    )
    if page.is_final and len(page.messages):
        detail["stored"] = dataclasses.asdict(_store_final(conn, page))
        text += (
            f"; stored now ({detail['stored']['inserted']} new): the platform may dequeue a final block "
            "once it is handed over"
        )
    return doctor_report.Check("head_block", "warn" if notes else "ok", text, account=account, detail=detail)


def _store_final(conn: db.Connection, page: models.HistoryPage) -> store.BlockResult:
    """Commit a final block exactly as a sync run does; keep its bytes if that fails."""
    run_id = store.start_run(conn, page.account_name)
    try:
        result = store.commit_block(conn, run_id, page)
    except errors.SyncWorkerError as exc:
        kept = models.KeptBlock(
            http_status=page.status,
            request_token=None,
            next_token=None,
            problem=f"sync-worker doctor could not store the final block it read ({_error(exc)[:300]})",
            body=page.body[: errors.MalformedBlockError.MAX_KEPT_BODY],
            body_size=len(page.body),
            body_sha256=hashlib.sha256(page.body).hexdigest(),
            received_at=datetime.datetime.now(datetime.UTC),
        )
        store.quarantine_block(conn, run_id, page.account_name, kept, page.ticket)
        store.finish_run(conn, run_id, "quarantined", "sync-worker doctor: final block quarantined")
        raise
    store.finish_run(conn, run_id, "succeeded", None)
    return result


def _keep(conn: db.Connection, account: str, block: models.KeptBlock) -> int:
    run_id = store.start_run(conn, account)
    kept = store.quarantine_block(conn, run_id, account, block)
    store.finish_run(conn, run_id, "quarantined", "sync-worker doctor: unreadable final answer quarantined")
    return kept.quarantine_id


def _callbacks(api: client.ThingSpaceClient, settings: config.Settings, account: str) -> doctor_report.Check:
    try:
        listeners = api.callbacks.list_registered_callbacks(account)
    except errors.SyncWorkerError as exc:
        return doctor_report.Check(
            "callbacks", "fail", _error(exc), account=account, code=exitcodes.for_error(exc)
        )
    ours = app.listener_url(settings, account)
    shown = [
        {
            "service": item.service_name,
            "url": item.url,
            "username": item.username,
            # The API hands the password back in clear text: only whether one is set is shown.
            "password": "(set)" if item.password else "(none)",
            "this_receiver": ours is not None and item.url == ours,
        }
        for item in listeners
    ]
    detail = {"listeners": shown, "this_receiver_url": ours}
    sms = [item for item in shown if item["service"] == models.SMS_CALLBACK_SERVICE]
    services = sorted({item.service_name for item in listeners} - {models.SMS_CALLBACK_SERVICE})
    others = f"; other services: {', '.join(services)}" if services else ""
    if not sms:
        summary = f"no SMS listener ({models.SMS_CALLBACK_SERVICE}): polling only{others}"
        return doctor_report.Check("callbacks", "ok", summary, account=account, detail=detail)
    if sms[0]["this_receiver"]:
        summary = f"SMS listener is this receiver ({sms[0]['url']}){others}"
        return doctor_report.Check("callbacks", "ok", summary, account=account, detail=detail)
    return doctor_report.Check(
        "callbacks",
        "warn",
        f"SMS listener at {sms[0]['url']} is not this receiver: after a startCallbacks, messages are "
        f"pushed there and leave the queue this worker reads{others}",
        account=account,
        detail=detail,
    )


def callback_url_check(settings: config.Settings) -> doctor_report.Check:
    if not settings.callback_url:
        return doctor_report.Check(
            "callback_url", "skipped", "SYNC_CALLBACK_URL is not set (push mode not configured)"
        )
    parts = urllib.parse.urlsplit(settings.callback_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return doctor_report.Check(
            "callback_url",
            "fail",
            f"SYNC_CALLBACK_URL host {host} does not resolve ({reason}): ThingSpace could not reach it",
            detail={"host": host, "port": port},
        )
    addresses = sorted({str(info[4][0]) for info in found})
    return doctor_report.Check(
        "callback_url",
        "ok",
        f"{host} resolves to {', '.join(addresses[:4])}" + (" ..." if len(addresses) > 4 else ""),
        detail={"host": host, "port": port, "addresses": addresses},
    )


# --- small helpers --------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return secret.scrub(str(exc) or type(exc).__name__)
