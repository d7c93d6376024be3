-- Named queries of sync_worker.retention. A message goes only when its timestamp and the time it was
-- first stored are both older than the window. Whole partitions are dropped where that holds for every
-- row; elsewhere old rows go in bounded batches. {partition} / {message} / {device} are composed by
-- psycopg.sql.Identifier from the catalog's names, never from text.

-- name: retention_partitions
-- Every partition of both history tables with its bounds as Postgres keeps them (never parsed from a
-- name). lower / upper are NULL for MINVALUE / MAXVALUE and for the DEFAULT partition; the bound literals
-- are printed in this session's TimeZone, which the cast reads back as the same instant.
SELECT p.relname AS parent,
       n.nspname AS schema,
       c.relname AS partition,
       b.bound = 'DEFAULT' AS is_default,
       substring(b.bound FROM $re$FROM \('(.*)'\) TO$re$)::timestamptz AS lower,
       substring(b.bound FROM $re$ TO \('(.*)'\)$$re$)::timestamptz AS upper,
       b.bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
WHERE i.inhparent IN ('sms_message'::regclass, 'sms_message_device'::regclass)
ORDER BY is_default, lower NULLS FIRST, parent;

-- name: retention_count_partition
-- Exact: every row, and those stored since the cutoff (one pass; outside any lock).
SELECT count(*), count(*) FILTER (WHERE first_stored_at >= %(cutoff)s) FROM {partition};

-- name: retention_lock_history
-- Parents first, the order DROP TABLE and every writer take them, so this wait cannot deadlock a writer.
-- Every reader and writer of the history waits while it is held: the work under it is an index probe
-- and a catalog change, nothing more.
LOCK TABLE ONLY sms_message, sms_message_device IN ACCESS EXCLUSIVE MODE;

-- name: retention_stored_since
-- Under the lock: was a row stored since the cutoff (it arrived after the count)? max() reads one entry
-- of the first_stored_at index (0010) backwards, whatever the statistics; EXISTS (... >= cutoff) was
-- planned as a sequential scan on a partition never analysed, a whole month read under this lock.
SELECT coalesce(max(first_stored_at) >= %(cutoff)s, false) FROM {partition};

-- name: retention_drop_partition
DROP TABLE {partition};

-- name: retention_delete_batch
-- One bounded batch of a partition's rows stored before the cutoff, with their extra devices (the twin
-- partition: same bounds; a device row is written by the statement that writes its message, with the
-- same received_at and first_stored_at). The caller repeats until a batch comes back short.
WITH doomed AS (
    SELECT ctid, account_name, received_at, message_key, first_stored_at
    FROM {message}
    WHERE first_stored_at < %(cutoff)s
    LIMIT %(batch)s
), devices AS (
    DELETE FROM {device} d
    USING doomed m
    WHERE d.first_stored_at = m.first_stored_at
      AND d.account_name = m.account_name
      AND d.message_key = m.message_key
      AND d.received_at IS NOT DISTINCT FROM m.received_at
    RETURNING 1
), gone AS (
    DELETE FROM {message} WHERE ctid IN (SELECT ctid FROM doomed) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM devices);

-- name: retention_delete_batch_alone
-- The same for a partition without a twin (a pair half dropped by an older version).
WITH doomed AS (
    SELECT ctid FROM {partition} WHERE first_stored_at < %(cutoff)s LIMIT %(batch)s
), gone AS (
    DELETE FROM {partition} WHERE ctid IN (SELECT ctid FROM doomed) RETURNING 1
)
SELECT count(*) FROM gone;

-- name: retention_try_lock
-- One retention at a time (daemon replicas each run the daily job): a session-level advisory lock.
SELECT pg_try_advisory_lock(%(namespace)s, %(key)s);

-- name: retention_unlock
SELECT pg_advisory_unlock(%(namespace)s, %(key)s);

-- name: retention_count_runs
-- Finished runs before the cutoff, except each account's newest run (status shows it).
SELECT count(*)
FROM sync_run r
WHERE r.started_at < %(cutoff)s AND r.finished_at IS NOT NULL
  AND r.id <> (SELECT max(n.id) FROM sync_run n WHERE n.account_name = r.account_name);

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
