"""The operator's calls to ThingSpace: send an SMS, divert the queue to the callback
(``start-delivery``), and the callback listeners (list, register, remove). Each is given a
``commands.Context`` (see ``commands``) and returns a code from ``exitcodes``."""

from __future__ import annotations

import json
from typing import Any

from sync_worker import app, commands, config, errors, exitcodes, logs, models, report


def _device(text: str) -> Any:
    kind, sep, ident = text.partition(":")
    if not sep or not kind or not ident:
        raise errors.ValidationError(f"--device {text!r} must be KIND:ID, e.g. imei:990000862471854")
    device = models.DeviceId(id=ident, kind=kind.lower())
    device.validate()
    return device


def cmd_send(ctx: commands.Context) -> int:
    request = models.SMSSendRequest(
        account_name=ctx.args.account,
        sms_message=ctx.args.message,
        device_ids=tuple(_device(d) for d in ctx.args.device),
        data_encoding=ctx.args.encoding,
    )
    request.validate()
    settings = ctx.settings(credentials=True, accounts=False)
    with app.command_client(settings) as api:
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


def cmd_start_delivery(ctx: commands.Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    commands.can_confirm(ctx, "start-delivery")
    settings = ctx.settings(credentials=True, accounts=False)
    if not commands.confirm(
        ctx,
        f"start-delivery asks ThingSpace to push the whole SMS queue of account {account} to the "
        "callback URL registered for it. Pushed messages leave the queue this worker reads: they "
        "reach sms_history only if the callback's receiver stores them.",
        f"Divert the queue of {account} to its callback?",
        "start-delivery",
    ):
        ctx.print("cancelled")
        return exitcodes.CONFIG
    with app.command_client(settings) as api:
        result = api.sms.start_queued_sms_delivery(account)
    logs.get_logger(__name__).warning(
        "queued_delivery_started", audit=True, account=account, success=result.success
    )
    ctx.print(json.dumps({"account": account, "success": result.success}))
    return exitcodes.OK if result.success else exitcodes.FAILED


def _listener_url(ctx: commands.Context, settings: config.Settings, account: str) -> str:
    url = ctx.args.url or app.listener_url(settings, account)
    if not url:
        raise errors.ConfigError(
            "SYNC_CALLBACK_URL (or --url) is required: the receiver's public https:// address"
        )
    return str(url)


def cmd_callbacks_list(ctx: commands.Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    with app.command_client(settings) as api:
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


def cmd_callbacks_register(ctx: commands.Context) -> int:
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
    with app.command_client(settings) as api:
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


def cmd_callbacks_remove(ctx: commands.Context) -> int:
    account = config.validate_account_name(ctx.args.account, "--account")
    settings = ctx.settings(credentials=True, accounts=False)
    ours = ctx.args.url or app.listener_url(settings, account)
    with app.command_client(settings) as api:
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
