"""Push mode's write path: pushed callbacks' messages and bodies, many callbacks in one transaction.

The messages go through the sync's own ``commit_block`` statement (``store.rows_statement``) without a
cursor move or a run, so a message that is also polled (or pushed again) is absorbed by the unique key;
the bodies are ``sms_callback`` rows. SQL lives in ``sql/queries/callbacks.sql`` and ``store.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sync_worker import db, errors, models, pgarrays, queries, rows, store

Connection = store.Connection


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackResult:
    callback_id: int
    messages: int  # messages read from the callback
    inserted: int  # of those, rows new to sms_history (the rest were stored already)
    first_seen: bool  # False: the same body was accepted before (a redelivery)


def store_callback(
    conn: Connection, kept: models.KeptCallback, messages: Sequence[models.SMSMessage]
) -> CallbackResult:
    """Store a pushed callback's messages (source 'push') and its body, in one transaction.

    The messages go through the sync's own ``commit_block`` statement without a cursor move
    or a run, as a quarantine replay does: same rows, same keys, so a message that is also
    polled (or pushed again) is absorbed by the unique key.
    """
    return store_callbacks(conn, [(kept, messages)])[0]


def store_callbacks(
    conn: Connection, items: Sequence[tuple[models.KeptCallback, Sequence[models.SMSMessage]]]
) -> list[CallbackResult]:
    """Store several pushed callbacks as ``store_callback`` does each, all in one transaction
    (the receiver's group commit: one commit, one WAL flush, for callbacks that arrived together).

    Either every callback lands or none does. Results are in the order of ``items``, each as if
    the callbacks had been written one after the other: a message in two of them is new to the
    first only, and a body given twice is one ``sms_callback`` row (the second sees the first, as
    a redelivery would). A handful of statements whatever the number of callbacks: the rows of
    each account's callbacks as one block (``commit_block``, which then names the new rows' keys),
    then every ``sms_callback`` row in one statement (a second for bodies given twice).
    """
    store.packed_arrays(conn)
    built = [rows.build_rows(kept.account_name, messages) for kept, messages in items]
    results: list[CallbackResult | None] = [None] * len(items)
    with db.transaction(conn) as cur:
        # The partitions come first, once for the whole batch: a failed statement would end the
        # transaction.
        store.ensure_partitions_in(cur, (r.received_at for found in built for r in found))
        inserted = _callback_rows(cur, items, built)
        for wave in _waves(items):
            at = {(items[i][0].account_name, items[i][0].body_sha256): i for i in wave}
            params = _callback_params(conn, [(items[i][0], built[i], inserted[i]) for i in wave])
            for account, sha, callback_id, first in cur.execute(queries.get("callback_keep"), params):
                i = at[(account, sha)]
                results[i] = CallbackResult(int(callback_id), len(built[i]), inserted[i], bool(first))
    if None in results:
        raise errors.StoreError("the database returned no sms_callback row for a callback")
    return results  # type: ignore[return-value]  # no None left


def _waves(items: Sequence[tuple[models.KeptCallback, object]]) -> list[list[int]]:
    """Indexes of ``items`` in statements that each hold a body at most once: a body's first copy
    in the first, its second in the second, ... (one statement cannot update a row twice)."""
    waves: list[list[int]] = []
    copies: dict[tuple[str, str], int] = {}
    for i, (kept, _) in enumerate(items):
        key = (kept.account_name, kept.body_sha256)
        n = copies.get(key, 0)
        copies[key] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(i)
    return waves


def _callback_rows(
    cur: db.Cursor,
    items: Sequence[tuple[models.KeptCallback, Sequence[models.SMSMessage]]],
    built: list[list[rows.Row]],
) -> list[int]:
    """Every callback's rows, one ``commit_block`` per account; how many rows each made new.

    A row that an earlier callback of the batch holds too is sent once and counted for the first
    (as if they had been written one after the other: the later one meets it in the history).
    """
    accounts: dict[str, list[int]] = {}
    for i, (kept, _) in enumerate(items):
        accounts.setdefault(kept.account_name, []).append(i)
    mine: list[list[tuple[dt.datetime | None, str]]] = [[] for _ in items]
    for account, indexes in accounts.items():
        seen: set[tuple[dt.datetime | None, str]] = set()
        block: list[rows.Row] = []
        for i in indexes:
            for r in built[i]:
                identity = (r.received_at, r.message_key)
                if identity not in seen:
                    seen.add(identity)
                    block.append(r)
                    mine[i].append(identity)
        if not block:
            continue
        row = store.rows_statement(cur, account, block, source="push", inserted_keys=True)
        new_keys = {bytes(k).hex() for k in row[3] or ()}
        for i in indexes:
            mine[i] = [identity for identity in mine[i] if identity[1] in new_keys]
    return [len(m) for m in mine]


def _callback_params(
    conn: Connection, found: Sequence[tuple[models.KeptCallback, list[rows.Row], int]]
) -> dict[str, Any]:
    """``callback_keep``'s columns for ``found``: (callback, its rows, how many were new)."""
    encoding = conn.info.encoding
    kept = [k for k, _, _ in found]
    return {
        "account_name": pgarrays.text([k.account_name for k in kept], encoding),
        "shape": pgarrays.text([k.shape for k in kept], encoding),
        "problem": pgarrays.text([store.error_text(k.problem) for k in kept], encoding),
        "request_id": pgarrays.text([k.request_id for k in kept], encoding),
        "callback_count": pgarrays.int4([k.callback_count for k in kept]),
        "messages": pgarrays.int4([len(b) for _, b, _ in found]),
        "inserted": pgarrays.int4([new for _, _, new in found]),
        # Keys are hex: a comma cannot be in one.
        "message_keys": pgarrays.text([",".join(r.message_key for r in b) for _, b, _ in found], encoding),
        "body": pgarrays.bytea([k.body for k in kept]),
        "body_sha256": pgarrays.text([k.body_sha256 for k in kept], encoding),
        "body_exact": pgarrays.boolean([k.body_exact for k in kept]),
        "source_address": pgarrays.text([k.source_address for k in kept], encoding),
        "received_at": pgarrays.timestamptz([k.received_at for k in kept]),
    }
