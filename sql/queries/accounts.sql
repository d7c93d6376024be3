-- Named queries of the accounts the database knows (sync_worker.accounts). One block per "-- name:" line.

-- name: accounts_known
-- An account is known once it has a cursor row, a run or a quarantined block. sms_history is not
-- scanned: every account with history also has a run (a forgotten one keeps its history only).
WITH names AS (
    SELECT account_name FROM sync_cursor
    UNION SELECT DISTINCT account_name FROM sync_run
    UNION SELECT DISTINCT account_name FROM sms_quarantine
)
SELECT n.account_name,
       c.next_token IS NOT NULL AS cursor_present,
       c.last_success_at,
       (SELECT max(r.started_at) FROM sync_run r WHERE r.account_name = n.account_name) AS last_run_at,
       (SELECT count(*) FROM sync_run r WHERE r.account_name = n.account_name) AS runs
FROM names n
LEFT JOIN sync_cursor c ON c.account_name = n.account_name
ORDER BY n.account_name;

-- name: account_is_known
SELECT EXISTS (SELECT 1 FROM sync_cursor WHERE account_name = %(account_name)s)
    OR EXISTS (SELECT 1 FROM sync_run WHERE account_name = %(account_name)s)
    OR EXISTS (SELECT 1 FROM sms_quarantine WHERE account_name = %(account_name)s);

-- name: forget_state
-- The account's sync state: cursor, runs (history rows keep their messages and their run_id),
-- the failure streak and its schedule row (a replica configured for it registers it again at its
-- next heartbeat, within a third of its lease, due at once).
-- Quarantined blocks and history are data: kept unless asked (forget_data). A data-modifying
-- WITH runs to completion whether or not the final SELECT reads it.
WITH cursor_gone AS (
    DELETE FROM sync_cursor WHERE account_name = %(account_name)s RETURNING 1
), streak_gone AS (
    DELETE FROM sync_block_failure WHERE account_name = %(account_name)s RETURNING 1
), runs_gone AS (
    DELETE FROM sync_run WHERE account_name = %(account_name)s RETURNING 1
), schedule_gone AS (
    DELETE FROM sync_schedule WHERE account_name = %(account_name)s RETURNING 1
)
SELECT (SELECT count(*) FROM cursor_gone) AS cursors,
       (SELECT count(*) FROM streak_gone) AS streaks,
       (SELECT count(*) FROM runs_gone) AS runs;

-- name: forget_data
-- Rare and deliberate, so a plain delete (retention drops whole partitions instead).
WITH history_gone AS (
    DELETE FROM sms_message WHERE account_name = %(account_name)s RETURNING 1
), devices_gone AS (
    DELETE FROM sms_message_device WHERE account_name = %(account_name)s RETURNING 1
), quarantine_gone AS (
    DELETE FROM sms_quarantine WHERE account_name = %(account_name)s RETURNING 1
)
SELECT (SELECT count(*) FROM history_gone) AS history,
       (SELECT count(*) FROM quarantine_gone) AS quarantined;
