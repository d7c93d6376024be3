-- 0006: history store v2. Half the bytes and Postgres time per message, partitions by time so
-- retention drops whole tables, and analyst views that keep the v1 column names.
-- Must run on PostgreSQL 15 as well as newer servers (UNIQUE NULLS NOT DISTINCT needs 15).
--
-- Where v1's bytes and CPU went, and what replaces it:
-- * the text of a message was kept 3-4 times (message, raw_json, raw jsonb, device_ids jsonb): v2 keeps
--   the fields once and the original only when it cannot be rebuilt byte for byte from them
--   (sms_history_rebuild_raw); no jsonb is parsed on the write path;
-- * a child row per device with a foreign-key trigger and two indexes: v2 keeps the first device in the
--   message row and only the 2nd, 3rd, ... devices in sms_message_device (rare);
-- * five b-trees, one keyed by a random hex text: v2 has two per partition, the unique key ordered by
--   time (inserts append at the right edge) with the 32-byte digest as bytea.
-- Comments on every object are the one source of docs/schema.md (generated from a migrated database).

ALTER TABLE sms_history RENAME TO sms_history_v1;
ALTER TABLE sms_history_device RENAME TO sms_history_device_v1;
DROP VIEW sms_by_device;
DROP VIEW sms_daily_device_counts;
DROP VIEW sms_daily_account_counts;

-- The JSON string literal of a text exactly as Python's json.dumps(ensure_ascii=True) writes it, so
-- the original of a message can be rebuilt in SQL byte for byte (tests/integration/test_history_v2.py
-- proves it on generated text). Plain printable ASCII, the common case, skips the per-character walk.
CREATE FUNCTION sms_json_string(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN value ~ '^[ !#-\[\]-~]*$' THEN '"' || value || '"'
        ELSE (
            SELECT '"' || string_agg(
                CASE
                    WHEN c = '"' THEN '\"'
                    WHEN c = '\' THEN '\\'
                    WHEN c = E'\n' THEN '\n'
                    WHEN c = E'\r' THEN '\r'
                    WHEN c = E'\t' THEN '\t'
                    WHEN c = E'\b' THEN '\b'
                    WHEN c = E'\f' THEN '\f'
                    WHEN ascii(c) BETWEEN 32 AND 126 THEN c
                    WHEN ascii(c) < 65536 THEN '\u' || lpad(to_hex(ascii(c)), 4, '0')
                    -- Beyond the BMP: a UTF-16 surrogate pair, as Python writes it.
                    ELSE '\u' || to_hex(55232 + (ascii(c) >> 10)) || '\u' || to_hex(56320 + (ascii(c) & 1023))
                END, '' ORDER BY n) || '"'
            FROM regexp_split_to_table(value, '') WITH ORDINALITY AS t(c, n)
        )
    END
$fn$;

-- The original of a well-formed one-device message, from its fields. The worker stores raw_kept
-- NULL only when this gives back exactly what was received (rows.Row.raw_kept).
CREATE FUNCTION sms_history_rebuild_raw(device_id text, device_kind text, message text, timestamp_raw text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT '{"deviceIds":[{"id":' || sms_json_string(device_id) || ',"kind":' || sms_json_string(device_kind)
        || '}],"message":' || sms_json_string(message) || ',"timestamp":' || sms_json_string(timestamp_raw) || '}'
$fn$;

CREATE TABLE sms_message (
    received_at     timestamptz,
    first_stored_at timestamptz NOT NULL DEFAULT now(),
    run_id          bigint,
    occurrence      integer     NOT NULL,
    device_count    integer     NOT NULL,
    raw_is_jsonb    boolean     NOT NULL DEFAULT true,
    account_name    text        NOT NULL,
    message_key     bytea       NOT NULL,
    device_kind     text,
    device_id       text,
    message         text,
    timestamp_raw   text,
    raw_kept        text,
    problems        text[]
) PARTITION BY RANGE (received_at);

CREATE TABLE sms_message_device (
    received_at     timestamptz,
    first_stored_at timestamptz NOT NULL,
    position        integer     NOT NULL,
    account_name    text        NOT NULL,
    message_key     bytea       NOT NULL,
    device_kind     text        NOT NULL,
    device_id       text        NOT NULL,
    message         text,
    timestamp_raw   text,
    problems        text[]
) PARTITION BY RANGE (received_at);

-- Messages without a usable timestamp. The CHECK lets a new monthly partition be created without
-- scanning this one, and turns "no partition for this month yet" into an error the worker answers by
-- creating it (store.commit_block).
CREATE TABLE sms_message_undated PARTITION OF sms_message DEFAULT;
ALTER TABLE sms_message_undated ADD CONSTRAINT sms_message_undated_only CHECK (received_at IS NULL);
CREATE TABLE sms_message_device_undated PARTITION OF sms_message_device DEFAULT;
ALTER TABLE sms_message_device_undated ADD CONSTRAINT sms_message_device_undated_only CHECK (received_at IS NULL);

-- The partition of a timestamp, created when missing: one per UTC month from 2000 to 2099, one before
-- and one from 2100 (so a device clock set to any year creates at most one more), the undated default
-- for NULL. Safe from several workers at once (the loser of a race finds it created); a lock wait (an analyst's long query on the parent) gives
-- up after 5 s instead of queueing every writer behind it.
CREATE FUNCTION sms_history_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    month_start timestamp;
    suffix text;
    bounds text;
BEGIN
    IF at IS NULL THEN
        RETURN 'undated';
    ELSIF at < timestamptz '2000-01-01 00:00:00+00' THEN
        suffix := 'before_2000';
        bounds := 'FROM (MINVALUE) TO (''2000-01-01 00:00:00+00'')';
    ELSIF at >= timestamptz '2100-01-01 00:00:00+00' THEN
        suffix := 'from_2100';
        bounds := 'FROM (''2100-01-01 00:00:00+00'') TO (MAXVALUE)';
    ELSE
        month_start := date_trunc('month', at AT TIME ZONE 'UTC');
        suffix := to_char(month_start, 'YYYYMM');
        bounds := format('FROM (%L) TO (%L)', to_char(month_start, 'YYYY-MM-DD "00:00:00+00"'),
                         to_char(month_start + interval '1 month', 'YYYY-MM-DD "00:00:00+00"'));
    END IF;
    IF to_regclass('sms_message_p' || suffix) IS NOT NULL
       AND to_regclass('sms_message_device_p' || suffix) IS NOT NULL THEN
        RETURN suffix;
    END IF;
    PERFORM set_config('lock_timeout', '5s', true);
    BEGIN
        IF to_regclass('sms_message_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF sms_message FOR VALUES %s', 'sms_message_p' || suffix, bounds);
            EXECUTE format('COMMENT ON TABLE %I IS %L', 'sms_message_p' || suffix,
                           'Partition of sms_message (' || bounds || '), created by sms_history_ensure_partition.');
        END IF;
        IF to_regclass('sms_message_device_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF sms_message_device FOR VALUES %s',
                           'sms_message_device_p' || suffix, bounds);
            EXECUTE format('COMMENT ON TABLE %I IS %L', 'sms_message_device_p' || suffix,
                           'Partition of sms_message_device (' || bounds || '), created by sms_history_ensure_partition.');
        END IF;
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        -- Another worker created it between our look and our CREATE (it waited on the parent's lock).
        NULL;
    END;
    RETURN suffix;
END
$fn$;

-- v1 rows move in place: partitions for every month they cover (and this one and the next), rows loaded
-- before the indexes exist (a sorted build per partition beats a million index inserts), keys kept.
-- Months are UTC months, as the partitions are: truncated in the session's TimeZone (a server set to
-- local time), a row's month could map to the partition before it and leave its own uncreated.
SELECT sms_history_ensure_partition(m)
FROM (
    SELECT DISTINCT date_trunc('month', received_at, 'UTC') AS m FROM sms_history_v1 WHERE received_at IS NOT NULL
    UNION SELECT now() UNION SELECT now() + interval '1 month'
) months;

INSERT INTO sms_message (
    received_at, first_stored_at, run_id, occurrence, device_count, raw_is_jsonb, account_name, message_key,
    device_kind, device_id, message, timestamp_raw, raw_kept, problems
)
SELECT h.received_at, h.first_stored_at, h.run_id, h.occurrence, h.device_count, h.raw IS NOT NULL,
       h.account_name, decode(h.message_key, 'hex'), h.device_kind, h.device_id, h.message, h.timestamp_raw,
       CASE WHEN h.device_count = 1
                 AND sms_history_rebuild_raw(h.device_id, h.device_kind, h.message, h.timestamp_raw) = h.raw_json
            THEN NULL ELSE h.raw_json END,
       NULLIF(h.problems, '{}')
FROM sms_history_v1 h;

INSERT INTO sms_message_device (
    received_at, first_stored_at, position, account_name, message_key, device_kind, device_id,
    message, timestamp_raw, problems
)
SELECT h.received_at, h.first_stored_at, d.position, h.account_name, decode(h.message_key, 'hex'),
       d.device_kind, d.device_id, h.message, h.timestamp_raw, NULLIF(h.problems, '{}')
FROM sms_history_device_v1 d
JOIN sms_history_v1 h ON h.id = d.history_id
WHERE d.position > 0;

-- Time first: rows of one account arrive in time order, so the key index grows at its right edge; and
-- "an account over a time range" is a range scan of the same index.
ALTER TABLE sms_message ADD CONSTRAINT sms_message_key
    UNIQUE NULLS NOT DISTINCT (account_name, received_at, message_key);
CREATE INDEX sms_message_device_idx ON sms_message (device_kind, device_id, received_at)
    WHERE device_id IS NOT NULL;
CREATE INDEX sms_message_device_extra_idx ON sms_message_device (device_kind, device_id, received_at);

DROP TABLE sms_history_device_v1;
DROP TABLE sms_history_v1;

-- Retention deletes old runs in batches; quarantine rows point at runs (ON DELETE SET NULL).
CREATE INDEX sync_run_started_idx ON sync_run (started_at);
CREATE INDEX sms_quarantine_run_idx ON sms_quarantine (run_id) WHERE run_id IS NOT NULL;

CREATE VIEW sms_history AS
SELECT m.account_name,
       encode(m.message_key, 'hex') AS message_key,
       m.occurrence,
       m.device_kind,
       m.device_id,
       m.device_count,
       m.message,
       m.received_at,
       m.timestamp_raw,
       coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message, m.timestamp_raw))
           AS raw_json,
       CASE WHEN m.raw_is_jsonb
            THEN coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message,
                                                              m.timestamp_raw))::jsonb
       END AS raw,
       coalesce(m.problems, '{}') AS problems,
       m.first_stored_at,
       m.run_id
FROM sms_message m;

CREATE VIEW sms_by_device AS
SELECT m.account_name,
       encode(m.message_key, 'hex') AS message_key,
       0 AS position,
       m.device_kind,
       m.device_id,
       m.message,
       m.received_at,
       m.timestamp_raw,
       coalesce(m.problems, '{}') AS problems,
       m.first_stored_at
FROM sms_message m
WHERE m.device_id IS NOT NULL
UNION ALL
SELECT d.account_name,
       encode(d.message_key, 'hex'),
       d.position,
       d.device_kind,
       d.device_id,
       d.message,
       d.received_at,
       d.timestamp_raw,
       coalesce(d.problems, '{}'),
       d.first_stored_at
FROM sms_message_device d;

CREATE VIEW sms_daily_account_counts AS
SELECT account_name,
       (received_at AT TIME ZONE 'UTC')::date AS day_utc,
       count(*) AS messages,
       count(*) FILTER (WHERE problems IS NOT NULL) AS malformed
FROM sms_message
GROUP BY 1, 2;

CREATE VIEW sms_daily_device_counts AS
SELECT account_name, device_kind, device_id, (received_at AT TIME ZONE 'UTC')::date AS day_utc,
       count(*) AS messages
FROM sms_by_device
GROUP BY 1, 2, 3, 4;

-- Per-day counts over a day range, index-backed (the views above aggregate everything first). SQL
-- functions of one SELECT are inlined, so the planner sees the range on received_at.
CREATE FUNCTION sms_account_daily_counts(account text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint, malformed bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT (m.received_at AT TIME ZONE 'UTC')::date, count(*), count(*) FILTER (WHERE m.problems IS NOT NULL)
    FROM sms_message m
    WHERE m.account_name = account
      AND m.received_at >= first_day::timestamp AT TIME ZONE 'UTC'
      AND m.received_at < (last_day + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1
$fn$;

CREATE FUNCTION sms_device_daily_counts(kind text, id text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT (d.received_at AT TIME ZONE 'UTC')::date, count(*)
    FROM sms_by_device d
    WHERE d.device_kind = kind AND d.device_id = id
      AND d.received_at >= first_day::timestamp AT TIME ZONE 'UTC'
      AND d.received_at < (last_day + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1
$fn$;
