-- Named queries of sync_worker.store. One block per "-- name:" line.

-- name: commit_block
-- The whole block in one statement (one round trip, one transaction): rows (with
-- their first three devices), rows of 4th and later devices, the cursor and the run counters land together or not at all.
-- Parameters travel in binary format: dumping text arrays as text costs more
-- client CPU than the server spends on the whole statement. A quarantine replay
-- runs the same statement with move_cursor false and no run: rows only; so does a
-- pushed callback, with source 'push'.
-- A message whose month has no partition yet fails the undated partition's CHECK;
-- store.commit_block then creates the partition and runs the statement again.
WITH inserted AS (
    INSERT INTO sms_message (
        received_at, run_id, occurrence, device_count, raw_is_jsonb, account_name, message_key,
        device_kind, device_id, message, timestamp_raw, raw_kept, problems, pushed, raw_devices,
        message_json, device2_kind, device2_id, device3_kind, device3_id
    )
    SELECT t.received_at, %(run_id)b, t.occurrence, t.device_count, t.raw_is_jsonb, %(account_name)b,
           t.message_key, t.device_kind, t.device_id, t.message, t.timestamp_raw, t.raw_kept,
           -- problems travel as one unit-separator-joined string per row: text[][] cannot be ragged.
           string_to_array(t.problems, E'\x1f'), %(source)b = 'push', t.raw_devices,
           t.message_json, t.device2_kind, t.device2_id, t.device3_kind, t.device3_id
    FROM unnest(
        %(received_at)b::timestamptz[], %(occurrence)b::integer[], %(device_count)b::integer[],
        %(raw_is_jsonb)b::boolean[], %(message_key)b::bytea[], %(device_kind)b::text[],
        %(device_id)b::text[], %(message)b::text[], %(timestamp_raw)b::text[], %(raw_kept)b::text[],
        %(problems)b::text[], %(raw_devices)b::text[], %(message_json)b::text[],
        %(device2_kind)b::text[], %(device2_id)b::text[], %(device3_kind)b::text[], %(device3_id)b::text[]
    ) AS t(received_at, occurrence, device_count, raw_is_jsonb, message_key, device_kind, device_id,
           message, timestamp_raw, raw_kept, problems, raw_devices, message_json, device2_kind, device2_id,
           device3_kind, device3_id)
    ON CONFLICT (account_name, received_at, message_key) DO NOTHING
    RETURNING received_at, first_stored_at, message_key, message, timestamp_raw, problems
),
devices AS (
    INSERT INTO sms_message_device (
        received_at, first_stored_at, position, account_name, message_key, device_kind, device_id,
        message, timestamp_raw, problems
    )
    SELECT i.received_at, i.first_stored_at, d.position, %(account_name)b, i.message_key, d.device_kind,
           d.device_id, i.message, i.timestamp_raw, i.problems
    FROM unnest(%(dev_message_key)b::bytea[], %(dev_position)b::integer[],
                %(dev_kind)b::text[], %(dev_id)b::text[])
         AS d(message_key, position, device_kind, device_id)
    JOIN inserted i ON i.message_key = d.message_key
    RETURNING 1
),
counted AS (
    SELECT (SELECT count(*) FROM inserted) AS inserted,
           (SELECT count(*) FROM devices) AS devices
),
cursor_moved AS (
    INSERT INTO sync_cursor (account_name, next_token, moved_at)
    SELECT %(account_name)b, %(next_token)b, now()
    WHERE %(move_cursor)b
    ON CONFLICT (account_name) DO UPDATE
        SET next_token = EXCLUDED.next_token, moved_at = EXCLUDED.moved_at
    RETURNING 1
),
run_counted AS (
    UPDATE sync_run r
    SET blocks = r.blocks + 1,
        messages_received = r.messages_received + %(received)b,
        rows_inserted = r.rows_inserted + c.inserted,
        replays = r.replays + (%(received)b - c.inserted),
        malformed = r.malformed + %(malformed)b
    FROM counted c
    WHERE r.id = %(run_id)b
    RETURNING 1
)
SELECT c.inserted,
       (SELECT count(*) FROM cursor_moved) AS cursor_rows,
       (SELECT count(*) FROM run_counted) AS run_rows,
       -- The new rows' keys, only when asked (several callbacks written as one block: each
       -- callback's share of the new rows); the subquery runs only then.
       CASE WHEN %(inserted_keys)b THEN (SELECT array_agg(message_key) FROM inserted) END AS inserted_keys
FROM counted c;

-- name: quarantine_block
-- A block whose body could not be read: the exact bytes, the cursor moved past
-- it and the run counted, in one statement like commit_block. A replay of the
-- same block (same body, same tokens) updates the existing row instead of
-- adding one.
WITH kept AS (
    INSERT INTO sms_quarantine AS q (
        account_name, run_id, http_status, request_token, next_token, problem,
        body, body_size, body_sha256, received_at
    )
    VALUES (%(account_name)s, %(run_id)s, %(http_status)s, %(request_token)s, %(next_token)s,
            %(problem)s, %(body)b, %(body_size)s, %(body_sha256)s, %(received_at)s)
    ON CONFLICT ON CONSTRAINT sms_quarantine_block DO UPDATE
        SET seen_count = q.seen_count + 1, last_seen_at = now()
    -- xmax is 0 only on a freshly inserted row version.
    RETURNING q.id, q.xmax = 0 AS inserted
),
cursor_moved AS (
    INSERT INTO sync_cursor (account_name, next_token, moved_at)
    VALUES (%(account_name)s, %(next_token)s, now())
    ON CONFLICT (account_name) DO UPDATE
        SET next_token = EXCLUDED.next_token, moved_at = EXCLUDED.moved_at
    RETURNING 1
),
run_counted AS (
    UPDATE sync_run SET quarantined = quarantined + 1
    WHERE id = %(run_id)s
    RETURNING 1
)
SELECT k.id, k.inserted,
       (SELECT count(*) FROM cursor_moved) AS cursor_rows,
       (SELECT count(*) FROM run_counted) AS run_rows
FROM kept k;

-- name: get_cursor
SELECT next_token FROM sync_cursor WHERE account_name = %(account_name)s;

-- name: start_run
INSERT INTO sync_run (account_name, worker_host, worker_pid)
VALUES (%(account_name)s, %(worker_host)s, %(worker_pid)s)
RETURNING id;

-- name: begin_run
-- The account's session-level advisory lock and, only when it was taken, the run's row: one
-- round trip instead of two transactions. The CTE calls a volatile function and is read twice,
-- so Postgres evaluates it exactly once. store.begin_run reads the cursor with get_cursor in the
-- same pipeline, as a statement of its own: a statement's snapshot is taken before it runs, and
-- only a snapshot taken after the lock is sure to see the previous holder's last block.
-- With the lock taken, every run of the account still open is abandoned: runs are opened under
-- this lock and closed before it is released, so an open one's worker died (killed, or cut off
-- from the database) before closing it. They are closed here, as 'abandoned'. The statement's
-- snapshot predates the lock, but a row the previous holder closed since then is re-checked
-- against its newest version before the update (READ COMMITTED) and left alone.
WITH lock AS (
    SELECT pg_try_advisory_lock(%(namespace)s, %(key)s) AS taken
),
abandoned AS (
    UPDATE sync_run
    SET finished_at = now(),
        outcome = 'abandoned',
        error = 'its worker stopped before closing the run (killed, or cut off from the database); '
                || 'closed by the account''s next run'
    WHERE account_name = %(account_name)s AND finished_at IS NULL AND (SELECT taken FROM lock)
    RETURNING id
),
run AS (
    INSERT INTO sync_run (account_name, worker_host, worker_pid)
    SELECT %(account_name)s, %(worker_host)s, %(worker_pid)s FROM lock WHERE lock.taken
    RETURNING id
)
SELECT l.taken, (SELECT id FROM run), (SELECT count(*) FROM abandoned) FROM lock l;

-- name: finish_run
-- Closes a run and notes it on the account's cursor row in one statement: last_success_at for a
-- succeeded run, last_error for any error text (both for a run that succeeded with a note), and,
-- when asked (a succeeded run), the end of the account's failure streak.
WITH finished AS (
    UPDATE sync_run
    SET finished_at = now(), outcome = %(outcome)s, error = %(error)s::text
    WHERE id = %(run_id)s
    RETURNING account_name
),
noted AS (
    INSERT INTO sync_cursor AS c (account_name, last_success_at, last_error, last_error_at)
    SELECT f.account_name,
           CASE WHEN %(succeeded)s THEN now() END,
           %(error)s::text,
           CASE WHEN %(error)s::text IS NOT NULL THEN now() END
    FROM finished f
    WHERE %(succeeded)s OR %(error)s::text IS NOT NULL
    ON CONFLICT (account_name) DO UPDATE
        SET last_success_at = CASE WHEN %(succeeded)s THEN EXCLUDED.last_success_at
                                   ELSE c.last_success_at END,
            last_error = CASE WHEN %(error)s::text IS NOT NULL THEN EXCLUDED.last_error
                              ELSE c.last_error END,
            last_error_at = CASE WHEN %(error)s::text IS NOT NULL THEN EXCLUDED.last_error_at
                                 ELSE c.last_error_at END
    RETURNING 1
),
streak_cleared AS (
    DELETE FROM sync_block_failure b
    USING finished f
    WHERE %(clear_failure_streak)s AND b.account_name = f.account_name
    RETURNING 1
)
SELECT f.account_name,
       (SELECT count(*) FROM noted) AS cursor_rows,
       (SELECT count(*) FROM streak_cleared) AS streaks_cleared
FROM finished f;

-- name: clear_cursor
INSERT INTO sync_cursor (account_name, next_token, moved_at, cleared_at, cleared_reason)
VALUES (%(account_name)s, NULL, now(), now(), %(reason)s)
ON CONFLICT (account_name) DO UPDATE
    SET next_token = NULL, moved_at = now(), cleared_at = now(), cleared_reason = EXCLUDED.cleared_reason;

-- name: try_account_lock
SELECT pg_try_advisory_lock(%(namespace)s, %(key)s);

-- name: release_account_lock
SELECT pg_advisory_unlock(%(namespace)s, %(key)s);

-- name: account_status
WITH accounts AS (
    SELECT account_name FROM sync_cursor
    UNION
    SELECT DISTINCT account_name FROM sync_run
),
last_run AS (
    SELECT DISTINCT ON (account_name) account_name, id, outcome, error, started_at, finished_at,
                                      worker_host, worker_pid
    FROM sync_run
    ORDER BY account_name, started_at DESC, id DESC
)
SELECT a.account_name,
       c.account_name IS NOT NULL AND c.next_token IS NOT NULL AS cursor_present,
       c.moved_at,
       c.last_success_at,
       EXTRACT(EPOCH FROM (now() - c.last_success_at))::double precision AS lag_seconds,
       (SELECT count(*) FROM sms_message h WHERE h.account_name = a.account_name) AS row_count,
       r.outcome AS last_run_outcome,
       c.last_error,
       c.last_error_at,
       (SELECT count(*) FROM sms_quarantine q
        WHERE q.account_name = a.account_name AND q.resolved_at IS NULL) AS quarantined,
       CASE WHEN r.finished_at IS NULL THEN r.worker_host || ':' || r.worker_pid END AS running_on,
       CASE WHEN r.finished_at IS NULL THEN r.started_at END AS running_since
FROM accounts a
LEFT JOIN sync_cursor c ON c.account_name = a.account_name
LEFT JOIN last_run r ON r.account_name = a.account_name
ORDER BY a.account_name;

-- name: lock_holder
-- The run that holds an account's lock: the newest run of the account still going.
SELECT worker_host, worker_pid, started_at,
       EXTRACT(EPOCH FROM (now() - started_at))::double precision AS held_seconds
FROM sync_run
WHERE account_name = %(account_name)s AND finished_at IS NULL
ORDER BY started_at DESC, id DESC
LIMIT 1;

-- name: stored_raw_json
SELECT raw_json FROM sms_history WHERE account_name = %(account_name)s;

-- name: ensure_partitions
SELECT sms_history_ensure_partition(at) FROM unnest(%(times)s::timestamptz[]) AS t(at);
