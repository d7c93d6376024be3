-- Named queries of the quarantine (sync_worker.store, sync_worker.quarantine). One block per "-- name:" line.

-- name: record_block_failure
-- The same block (token and bytes) failing with the same kind of error extends the streak;
-- anything else starts a new one.
INSERT INTO sync_block_failure AS f (account_name, request_token, body_sha256, error_kind, error, streak)
VALUES (%(account_name)s, %(request_token)s, %(body_sha256)s, %(error_kind)s, %(error)s, 1)
ON CONFLICT (account_name) DO UPDATE
SET streak = CASE
        WHEN f.request_token IS NOT DISTINCT FROM EXCLUDED.request_token
             AND f.body_sha256 = EXCLUDED.body_sha256
             AND f.error_kind = EXCLUDED.error_kind
        THEN f.streak + 1 ELSE 1 END,
    first_failed_at = CASE
        WHEN f.request_token IS NOT DISTINCT FROM EXCLUDED.request_token
             AND f.body_sha256 = EXCLUDED.body_sha256
             AND f.error_kind = EXCLUDED.error_kind
        THEN f.first_failed_at ELSE now() END,
    request_token = EXCLUDED.request_token,
    body_sha256 = EXCLUDED.body_sha256,
    error_kind = EXCLUDED.error_kind,
    error = EXCLUDED.error,
    last_failed_at = now()
RETURNING streak;

-- name: clear_block_failure
DELETE FROM sync_block_failure WHERE account_name = %(account_name)s;

-- name: quarantine_list
SELECT id, account_name, http_status, problem, body_size, body_sha256, first_stored_at, seen_count,
       resolved_at, replayed_at, replay_messages, replay_inserted, replay_problem
FROM sms_quarantine
WHERE (%(account_name)s::text IS NULL OR account_name = %(account_name)s::text)
  AND (%(include_resolved)s::boolean OR resolved_at IS NULL)
ORDER BY id;

-- name: quarantine_show
SELECT id, account_name, http_status, problem, body_size, body_sha256, first_stored_at, seen_count,
       resolved_at, replayed_at, replay_messages, replay_inserted, replay_problem,
       run_id, request_token IS NOT NULL AS has_request_token, next_token IS NOT NULL AS has_next_token,
       received_at, last_seen_at, body
FROM sms_quarantine
WHERE id = %(id)s;

-- name: quarantine_for_replay
-- Locked so two operators replaying at once store each block once.
SELECT id, account_name, body, body_size, resolved_at
FROM sms_quarantine
WHERE id = %(id)s
FOR UPDATE;

-- name: quarantine_unresolved_ids
SELECT id FROM sms_quarantine WHERE resolved_at IS NULL ORDER BY id;

-- name: quarantine_unresolved_count
SELECT count(*) FROM sms_quarantine WHERE account_name = %(account_name)s AND resolved_at IS NULL;

-- name: replay_rows
-- The rows of a replayed block, with the same conflict rule as commit_block (a message already
-- stored is absorbed); the cursor and the run counters are left alone.
WITH incoming AS (
    SELECT *
    FROM unnest(
        %(message_key)b::text[], %(occurrence)b::integer[], %(device_ids)b::text[],
        %(device_kind)b::text[], %(device_id)b::text[], %(device_count)b::integer[],
        %(message)b::text[], %(received_at)b::timestamptz[], %(timestamp_raw)b::text[],
        %(raw_json)b::text[], %(raw_is_jsonb)b::boolean[], %(problems)b::text[]
    ) AS t(message_key, occurrence, device_ids, device_kind, device_id, device_count,
           message, received_at, timestamp_raw, raw_json, raw_is_jsonb, problems)
),
inserted AS (
    INSERT INTO sms_history (
        account_name, message_key, occurrence, device_ids, device_kind, device_id, device_count,
        message, received_at, timestamp_raw, raw_json, raw, problems, run_id
    )
    SELECT %(account_name)b, message_key, occurrence, device_ids::jsonb, device_kind, device_id,
           device_count, message, received_at, timestamp_raw, raw_json,
           CASE WHEN raw_is_jsonb THEN raw_json::jsonb END,
           string_to_array(problems, E'\x1f'),
           NULL
    FROM incoming
    ON CONFLICT (account_name, message_key) DO NOTHING
    RETURNING id, message_key, received_at
),
devices AS (
    INSERT INTO sms_history_device (history_id, position, account_name, device_kind, device_id, received_at)
    SELECT i.id, d.position, %(account_name)b, d.device_kind, d.device_id, i.received_at
    FROM unnest(%(dev_message_key)b::text[], %(dev_position)b::integer[],
                %(dev_kind)b::text[], %(dev_id)b::text[])
         AS d(message_key, position, device_kind, device_id)
    JOIN inserted i ON i.message_key = d.message_key
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM devices);

-- name: quarantine_mark_replayed
UPDATE sms_quarantine
SET replayed_at = now(),
    replay_messages = %(messages)s,
    replay_inserted = %(inserted)s,
    replay_problem = %(problem)s,
    resolved_at = CASE WHEN %(resolved)s THEN now() END
WHERE id = %(id)s;
