-- Named queries of push mode (sync_worker.store.store_callback, sync_worker.status). One block per "-- name:" line.

-- name: callback_keep
-- The accepted body and what it produced; a byte-identical redelivery updates the row (the
-- history rows it would produce are absorbed by their unique keys in the same transaction).
-- A body kept unread (an unknown shape, or a receiver failure answered 500) and read now takes
-- what this reading produced: its messages are in the history from this transaction on.
INSERT INTO sms_callback AS c (
    account_name, shape, problem, request_id, callback_count, messages, inserted, message_keys,
    body, body_size, body_sha256, body_exact, source_address, received_at
)
VALUES (%(account_name)s, %(shape)s, %(problem)s, %(request_id)s, %(callback_count)s, %(messages)s,
        %(inserted)s, %(message_keys)s, %(body)b, %(body_size)s, %(body_sha256)s, %(body_exact)s,
        %(source_address)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT sms_callback_body DO UPDATE
    SET seen_count = c.seen_count + 1, last_seen_at = now(),
        shape = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.shape ELSE c.shape END,
        problem = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.problem ELSE c.problem END,
        messages = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.messages ELSE c.messages END,
        inserted = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.inserted ELSE c.inserted END,
        message_keys = CASE WHEN c.shape = 'unknown' THEN EXCLUDED.message_keys ELSE c.message_keys END
-- xmax is 0 only on a freshly inserted row version.
RETURNING c.id, c.xmax = 0 AS inserted;

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
