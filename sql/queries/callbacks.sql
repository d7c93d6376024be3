-- Named queries of push mode (sync_worker.store.store_callback, sync_worker.status). One block per "-- name:" line.

-- name: callback_keep
-- The accepted bodies of a group commit and what each produced, one row per callback, in one
-- statement; a byte-identical redelivery updates the row (the history rows it would produce are
-- absorbed by their unique keys in the same transaction). A body kept unread (an unknown shape,
-- or a receiver failure answered 500) and read now takes what this reading produced: its messages
-- are in the history from this transaction on. One statement cannot update a row twice, so a body
-- given twice in one batch goes in a second run of it (store.store_callbacks). Columns travel as
-- packed binary arrays (pgarrays); a callback's message keys as one comma-joined text (text[][]
-- cannot be ragged). RETURNING's order is not promised: rows are matched by body_sha256.
INSERT INTO sms_callback AS c (
    account_name, shape, problem, request_id, callback_count, messages, inserted, message_keys,
    body, body_size, body_sha256, body_exact, source_address, received_at
)
SELECT t.account_name, t.shape, t.problem, t.request_id, t.callback_count, t.messages, t.inserted,
       string_to_array(t.message_keys, ','), t.body, octet_length(t.body), t.body_sha256,
       t.body_exact, t.source_address, t.received_at
FROM unnest(
    %(account_name)b::text[], %(shape)b::text[], %(problem)b::text[], %(request_id)b::text[],
    %(callback_count)b::integer[], %(messages)b::integer[], %(inserted)b::integer[],
    %(message_keys)b::text[], %(body)b::bytea[], %(body_sha256)b::text[], %(body_exact)b::boolean[],
    %(source_address)b::text[], %(received_at)b::timestamptz[]
) AS t(account_name, shape, problem, request_id, callback_count, messages, inserted, message_keys,
       body, body_sha256, body_exact, source_address, received_at)
ON CONFLICT ON CONSTRAINT sms_callback_body DO UPDATE
    SET seen_count = c.seen_count + 1, last_seen_at = now(),
        shape = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.shape ELSE c.shape END,
        problem = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.problem ELSE c.problem END,
        messages = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.messages ELSE c.messages END,
        inserted = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.inserted ELSE c.inserted END,
        message_keys = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.message_keys ELSE c.message_keys END
-- xmax is 0 only on a freshly inserted row version.
RETURNING c.account_name, c.body_sha256, c.id, c.xmax = 0 AS inserted;

-- name: callback_unknown_list
SELECT id, account_name, problem, request_id, body_size, body_sha256, first_stored_at, seen_count
FROM sms_callback
WHERE shape = 'unknown'
  AND (%(account_name)s::text IS NULL OR account_name = %(account_name)s::text)
ORDER BY id;

-- name: history_source_counts
-- Rows of one account by source (the push demo, operators comparing the two modes).
SELECT source, count(*) FROM sms_history WHERE account_name = %(account_name)s GROUP BY source ORDER BY source;

-- name: callback_session_timeouts
-- Set once per receiver connection (psycopg_pool's configure): a callback statement that waits on a
-- lock or runs long fails fast, and the receiver answers 503 instead of holding the platform past
-- the ~4 s after which it delivers the same callback again.
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false);
