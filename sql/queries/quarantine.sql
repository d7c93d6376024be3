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

-- name: quarantine_mark_replayed
UPDATE sms_quarantine
SET replayed_at = now(),
    replay_messages = %(messages)s,
    replay_inserted = %(inserted)s,
    replay_problem = %(problem)s,
    resolved_at = CASE WHEN %(resolved)s THEN now() END
WHERE id = %(id)s;
