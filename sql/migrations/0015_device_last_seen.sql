-- 0015: the analyst's everyday questions (issue 26): which devices went silent, and what reading
-- raw / raw_json costs. Must run on PostgreSQL 15 as well as newer servers.
--
-- "Which devices went silent?" needs every device's last message. Grouping the history by device
-- reads every row of the window; a summary table kept by the write statement would cost every block
-- (and lock rows two accounts' blocks share). This function walks the device indexes instead: a
-- skip scan (one index descent per partition to find the next device, one more for its last
-- message), so it reads two index entries per device and partition of the window, never the rows
-- of a busy device. It is a single SQL statement, so the planner inlines it into the caller's query
-- (EXPLAIN shows the index scans; run-time pruning keeps the partitions outside the window out).
CREATE FUNCTION sms_device_last_seen(since timestamptz, until timestamptz DEFAULT now())
RETURNS TABLE (device_kind text, device_id text, last_received_at timestamptz, account_name text,
               message_key text, message text)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    WITH RECURSIVE device AS (
        (SELECT b.device_kind, b.device_id
         FROM sms_by_device b
         WHERE b.device_id IS NOT NULL AND b.received_at >= since AND b.received_at < until
         ORDER BY b.device_kind, b.device_id
         LIMIT 1)
        UNION ALL
        SELECT n.device_kind, n.device_id
        FROM device d
        CROSS JOIN LATERAL (
            SELECT b.device_kind, b.device_id
            FROM sms_by_device b
            WHERE b.device_id IS NOT NULL AND (b.device_kind, b.device_id) > (d.device_kind, d.device_id)
              AND b.received_at >= since AND b.received_at < until
            ORDER BY b.device_kind, b.device_id
            LIMIT 1
        ) AS n
    )
    SELECT d.device_kind, d.device_id, l.received_at, l.account_name, l.message_key, l.message
    FROM device d
    CROSS JOIN LATERAL (
        SELECT b.received_at, b.account_name, b.message_key, b.message
        FROM sms_by_device b
        WHERE b.device_kind = d.device_kind AND b.device_id = d.device_id
          AND b.received_at >= since AND b.received_at < until
        ORDER BY b.received_at DESC
        LIMIT 1
    ) AS l
$fn$;

COMMENT ON FUNCTION sms_device_last_seen(timestamptz, timestamptz) IS $c$Every well-formed device (kind, id) with a message received in [since, until) (until defaults to now()), once, with its last message in that window: when, for which account, its key and text; over every account, in device order. Index-backed (a skip scan of the device indexes: two index descents per device and partition of the window). Devices with no message for 6 hours: SELECT * FROM sms_device_last_seen(now() - interval '30 days') WHERE last_received_at < now() - interval '6 hours'.$c$;

-- What reading the original costs, where analysts see the columns (issue 26): raw_json is rebuilt
-- from the fields for most rows (sms_history_rebuild_raw, a per-character walk for text that is not
-- plain ASCII), raw parses that again as jsonb. Measured by `make bench-store` (bench/README.md).
COMMENT ON COLUMN sms_history.raw_json IS $c$The message exactly as received, as ASCII JSON: json.loads(raw_json) gives back the original value, including NUL, lone surrogates and NaN, which text and jsonb refuse. Computed when read for most rows (rebuilt from the fields): about 20-30 µs per row, 20-30 s per million, a hundred times reading message. For bulk reads select the columns (message, device_kind, device_id, timestamp_raw, problems) and take raw_json only for the rows that need it, such as those with problems (docs/schema.md "Reading the originals in bulk").$c$;
COMMENT ON COLUMN sms_history.raw IS $c$The same message as jsonb; NULL when jsonb cannot represent it (problems says so). Computed when read: raw_json's cost plus a jsonb parse per row. Filter rows on the columns first and use raw for a member the columns do not have (see raw_json for bulk reads).$c$;
