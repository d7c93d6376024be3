-- Named queries of sync_worker.retention. Retention drops whole monthly partitions of the history
-- (no row-by-row delete of dated messages); undated messages and old runs go in bounded batches.

-- name: retention_partitions
-- Every partition of both history tables, with an estimate of its rows (from ANALYZE / VACUUM).
SELECT c.relname, greatest(c.reltuples, 0)::bigint AS rows_estimate
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('sms_message'::regclass, 'sms_message_device'::regclass)
ORDER BY c.relname;

-- name: retention_count_undated
SELECT count(*) FROM sms_message_undated WHERE first_stored_at < %(cutoff)s;

-- name: retention_count_runs
-- Finished runs before the cutoff, except each account's newest run (status shows it).
SELECT count(*)
FROM sync_run r
WHERE r.started_at < %(cutoff)s AND r.finished_at IS NOT NULL
  AND r.id <> (SELECT max(n.id) FROM sync_run n WHERE n.account_name = r.account_name);

-- name: retention_delete_undated
-- One bounded batch; the caller repeats until a batch deletes nothing.
WITH doomed AS (
    SELECT ctid FROM sms_message_undated WHERE first_stored_at < %(cutoff)s LIMIT %(batch)s
), devices AS (
    DELETE FROM sms_message_device_undated d
    USING sms_message_undated m
    WHERE m.ctid IN (SELECT ctid FROM doomed)
      AND d.account_name = m.account_name AND d.message_key = m.message_key
    RETURNING 1
), gone AS (
    DELETE FROM sms_message_undated WHERE ctid IN (SELECT ctid FROM doomed) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM devices);

-- name: retention_delete_runs
WITH doomed AS (
    SELECT r.id
    FROM sync_run r
    WHERE r.started_at < %(cutoff)s AND r.finished_at IS NOT NULL
      AND r.id <> (SELECT max(n.id) FROM sync_run n WHERE n.account_name = r.account_name)
    LIMIT %(batch)s
), gone AS (
    DELETE FROM sync_run WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT count(*) FROM gone;

-- name: retention_drop_partition
-- {name} is composed by psycopg.sql.Identifier from a partition name the plan matched.
DROP TABLE IF EXISTS {name};
