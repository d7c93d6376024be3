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
    pushed          boolean     NOT NULL DEFAULT false,
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
-- Malformed messages are few: their own small index answers "malformed of an account" and the
-- daily malformed counts without reading the heap.
CREATE INDEX sms_message_malformed_idx ON sms_message (account_name, received_at) WHERE problems IS NOT NULL;

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
       m.run_id,
       CASE WHEN m.pushed THEN 'push' ELSE 'poll' END AS source
FROM sms_message m;

-- No WHERE in the first branch: a UNION ALL branch with its own WHERE is not flattened into the
-- partitions' append, which costs the ordered index walk (a sort of every row of the device instead).
-- A message without a device therefore appears once, with NULL device columns and position.
CREATE VIEW sms_by_device AS
SELECT m.account_name,
       encode(m.message_key, 'hex') AS message_key,
       CASE WHEN m.device_id IS NOT NULL THEN 0 END AS position,
       m.device_kind,
       m.device_id,
       m.message,
       m.received_at,
       m.timestamp_raw,
       coalesce(m.problems, '{}') AS problems,
       m.first_stored_at
FROM sms_message m
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
WHERE device_id IS NOT NULL
GROUP BY 1, 2, 3, 4;

-- Per-day counts over a day range, index-backed (the views above aggregate everything first). One
-- count per day over a time range of an index (index-only scans), instead of grouping by an
-- expression the planner would sort; days without messages count 0.
CREATE FUNCTION sms_account_daily_counts(account text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint, malformed bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT d.day::date,
           (SELECT count(*) FROM sms_message m
            WHERE m.account_name = account AND m.received_at >= d.day AND m.received_at < d.day + interval '1 day'),
           (SELECT count(*) FROM sms_message m
            WHERE m.account_name = account AND m.problems IS NOT NULL
              AND m.received_at >= d.day AND m.received_at < d.day + interval '1 day')
    FROM generate_series(first_day::timestamp AT TIME ZONE 'UTC', last_day::timestamp AT TIME ZONE 'UTC',
                         interval '1 day') AS d(day)
$fn$;

CREATE FUNCTION sms_device_daily_counts(kind text, id text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT d.day::date,
           (SELECT count(*) FROM sms_by_device b
            WHERE b.device_kind = kind AND b.device_id = id
              AND b.received_at >= d.day AND b.received_at < d.day + interval '1 day')
    FROM generate_series(first_day::timestamp AT TIME ZONE 'UTC', last_day::timestamp AT TIME ZONE 'UTC',
                         interval '1 day') AS d(day)
$fn$;

-- What every object means. These comments are the one source of the tables in docs/schema.md
-- (regenerated from a migrated database by `make schema-doc`; a test keeps the two equal), and what BI
-- tools show. A later migration that adds or changes an object comments it too.
COMMENT ON TABLE sms_message IS $c$One row per message ever received, for every account: the storage behind the sms_history view. Partitioned by UTC month of received_at (sms_history_ensure_partition); messages without a usable timestamp live in sms_message_undated. Rows are never updated; retention (sync-worker retention) drops whole partitions.$c$;
COMMENT ON COLUMN sms_message.received_at IS $c$The API's timestamp, parsed, in UTC; the partition key. NULL when missing or unparseable. A timestamp without offset is read as UTC (and problems says so).$c$;
COMMENT ON COLUMN sms_message.first_stored_at IS $c$When the worker first stored the row (a replay never changes it).$c$;
COMMENT ON COLUMN sms_message.run_id IS $c$The sync_run that stored it; NULL for rows stored by a quarantine replay. May name a run that retention has since deleted.$c$;
COMMENT ON COLUMN sms_message.occurrence IS $c$0 for the first of several identical messages in one block, 1 for the second, ...$c$;
COMMENT ON COLUMN sms_message.device_count IS $c$Number of well-formed devices the message names (the first is in this row, the others in sms_message_device).$c$;
COMMENT ON COLUMN sms_message.raw_is_jsonb IS $c$Whether the original can be read as jsonb (false when it holds NUL, a lone surrogate or a non-finite number; problems then says so).$c$;
COMMENT ON COLUMN sms_message.pushed IS $c$True when the message was stored from a callback the receiver accepted (push mode), false when read from the history queue. A message that arrives both ways is one row, marked by the copy committed first.$c$;
COMMENT ON COLUMN sms_message.account_name IS $c$ThingSpace account the message was queued for (leading zeros kept).$c$;
COMMENT ON COLUMN sms_message.message_key IS $c$Identity of the message: the 32-byte sha256 digest (see "Message identity"; the sms_history view shows it as hex). Unique per account and received_at.$c$;
COMMENT ON COLUMN sms_message.device_kind IS $c$Kind (imei, msisdn, ...; lower case) of the first well-formed sending device; NULL if none.$c$;
COMMENT ON COLUMN sms_message.device_id IS $c$Id of that device, as received (leading zeros kept).$c$;
COMMENT ON COLUMN sms_message.message IS $c$The SMS text. NUL and lone surrogates are replaced by U+FFFD (and problems says so). NULL when missing or not a string.$c$;
COMMENT ON COLUMN sms_message.timestamp_raw IS $c$The timestamp string exactly as received (U+FFFD for characters text cannot hold).$c$;
COMMENT ON COLUMN sms_message.raw_kept IS $c$The message exactly as received (ASCII JSON), kept only when sms_history_rebuild_raw cannot rebuild it byte for byte from the fields; NULL otherwise. Read sms_history.raw_json, which is always the original.$c$;
COMMENT ON COLUMN sms_message.problems IS $c$What did not fit the documented model (missing fields, wrong types, unknown kind, replaced characters, ...). NULL for a well-formed message.$c$;

COMMENT ON TABLE sms_message_device IS $c$The second, third, ... devices of messages that name several (the first is in sms_message), with copies of the message fields the sms_by_device view shows. Partitioned like sms_message.$c$;
COMMENT ON COLUMN sms_message_device.received_at IS $c$As in sms_message; the partition key.$c$;
COMMENT ON COLUMN sms_message_device.first_stored_at IS $c$As in sms_message.$c$;
COMMENT ON COLUMN sms_message_device.position IS $c$0-based position among the message's well-formed devices (1 or more here).$c$;
COMMENT ON COLUMN sms_message_device.account_name IS $c$As in sms_message.$c$;
COMMENT ON COLUMN sms_message_device.message_key IS $c$The message's key in sms_message.$c$;
COMMENT ON COLUMN sms_message_device.device_kind IS $c$Device kind, lower case.$c$;
COMMENT ON COLUMN sms_message_device.device_id IS $c$Device id as received.$c$;
COMMENT ON COLUMN sms_message_device.message IS $c$As in sms_message.$c$;
COMMENT ON COLUMN sms_message_device.timestamp_raw IS $c$As in sms_message.$c$;
COMMENT ON COLUMN sms_message_device.problems IS $c$As in sms_message.$c$;
COMMENT ON TABLE sms_message_undated IS $c$Partition of sms_message for messages without a usable timestamp (received_at NULL). Retention deletes its rows by first_stored_at, in batches.$c$;
COMMENT ON TABLE sms_message_device_undated IS $c$Partition of sms_message_device for messages without a usable timestamp.$c$;

COMMENT ON VIEW sms_history IS $c$One row per message: the analysts' table, with the v1 column names. raw_json is the original as received (stored or rebuilt); raw is the same as jsonb.$c$;
COMMENT ON COLUMN sms_history.account_name IS $c$ThingSpace account the message was queued for.$c$;
COMMENT ON COLUMN sms_history.message_key IS $c$Identity of the message (sha256 hex, see "Message identity"). Unique per account (and received_at).$c$;
COMMENT ON COLUMN sms_history.occurrence IS $c$0 for the first of several identical messages in one block, 1 for the second, ...$c$;
COMMENT ON COLUMN sms_history.device_kind IS $c$Kind of the first well-formed sending device (lower case); NULL if none.$c$;
COMMENT ON COLUMN sms_history.device_id IS $c$Id of that device, as received.$c$;
COMMENT ON COLUMN sms_history.device_count IS $c$Number of well-formed devices (all of them are in sms_by_device).$c$;
COMMENT ON COLUMN sms_history.message IS $c$The SMS text (NUL and lone surrogates replaced by U+FFFD).$c$;
COMMENT ON COLUMN sms_history.received_at IS $c$The API's timestamp, parsed, in UTC; NULL when missing or unparseable.$c$;
COMMENT ON COLUMN sms_history.timestamp_raw IS $c$The timestamp string exactly as received.$c$;
COMMENT ON COLUMN sms_history.raw_json IS $c$The message exactly as received, as ASCII JSON: json.loads(raw_json) gives back the original value, including NUL, lone surrogates and NaN, which text and jsonb refuse.$c$;
COMMENT ON COLUMN sms_history.raw IS $c$The same message as jsonb; NULL when jsonb cannot represent it (problems says so). Computed when read.$c$;
COMMENT ON COLUMN sms_history.problems IS $c$What did not fit the documented model; empty for a well-formed message.$c$;
COMMENT ON COLUMN sms_history.first_stored_at IS $c$When the worker first stored the row.$c$;
COMMENT ON COLUMN sms_history.run_id IS $c$The sync_run that stored it (NULL for a quarantine replay or a pushed callback).$c$;
COMMENT ON COLUMN sms_history.source IS $c$poll (read from the history queue) or push (a callback the receiver accepted, sync-worker receive). A message that arrived both ways is one row with the source of the copy committed first (see "Message identity").$c$;

COMMENT ON VIEW sms_by_device IS $c$One row per message per well-formed device (a message without one appears once, with NULL device columns): the way to ask about a device. Filtering on device_kind and device_id and ordering by received_at walks the device indexes of every partition (no sort).$c$;
COMMENT ON COLUMN sms_by_device.account_name IS $c$Account.$c$;
COMMENT ON COLUMN sms_by_device.message_key IS $c$The message's key (hex), as in sms_history.$c$;
COMMENT ON COLUMN sms_by_device.position IS $c$Position of the device in the message (0 = the first; NULL for a message without a device).$c$;
COMMENT ON COLUMN sms_by_device.device_kind IS $c$Device kind, lower case.$c$;
COMMENT ON COLUMN sms_by_device.device_id IS $c$Device id as received.$c$;
COMMENT ON COLUMN sms_by_device.message IS $c$SMS text.$c$;
COMMENT ON COLUMN sms_by_device.received_at IS $c$Parsed timestamp (UTC).$c$;
COMMENT ON COLUMN sms_by_device.timestamp_raw IS $c$Timestamp as received.$c$;
COMMENT ON COLUMN sms_by_device.problems IS $c$As in sms_history.$c$;
COMMENT ON COLUMN sms_by_device.first_stored_at IS $c$As in sms_history.$c$;

COMMENT ON VIEW sms_daily_account_counts IS $c$Messages per account per UTC day over the whole history (aggregates every row: for a day range use sms_account_daily_counts, which is index-backed).$c$;
COMMENT ON COLUMN sms_daily_account_counts.account_name IS $c$Account.$c$;
COMMENT ON COLUMN sms_daily_account_counts.day_utc IS $c$UTC day of received_at (NULL for unparseable timestamps).$c$;
COMMENT ON COLUMN sms_daily_account_counts.messages IS $c$Messages that day.$c$;
COMMENT ON COLUMN sms_daily_account_counts.malformed IS $c$Of those, messages with problems.$c$;
COMMENT ON VIEW sms_daily_device_counts IS $c$Messages per device per UTC day over the whole history (for one device and a day range use sms_device_daily_counts, which is index-backed).$c$;
COMMENT ON COLUMN sms_daily_device_counts.account_name IS $c$Account.$c$;
COMMENT ON COLUMN sms_daily_device_counts.device_kind IS $c$Device kind.$c$;
COMMENT ON COLUMN sms_daily_device_counts.device_id IS $c$Device id.$c$;
COMMENT ON COLUMN sms_daily_device_counts.day_utc IS $c$UTC day of received_at (NULL for unparseable timestamps).$c$;
COMMENT ON COLUMN sms_daily_device_counts.messages IS $c$Messages that device sent that day.$c$;

COMMENT ON FUNCTION sms_account_daily_counts(text, date, date) IS $c$Messages (and malformed ones) of one account per UTC day from first_day to last_day inclusive, 0 for days without messages. Index-backed: SELECT * FROM sms_account_daily_counts('0252012345-00001', '2024-05-01', '2024-05-31').$c$;
COMMENT ON FUNCTION sms_device_daily_counts(text, text, date, date) IS $c$Messages of one device (kind, id) per UTC day from first_day to last_day inclusive, over every account, 0 for days without messages. Index-backed.$c$;
COMMENT ON FUNCTION sms_history_ensure_partition(timestamptz) IS $c$Creates the sms_message and sms_message_device partitions that a row received at the given time needs, if missing, and returns their suffix (YYYYMM, before_2000, from_2100, or undated). The worker calls it; safe to call from anywhere.$c$;
COMMENT ON FUNCTION sms_history_rebuild_raw(text, text, text, text) IS $c$The original JSON of a one-device message from its device id, kind, text and timestamp, exactly as the worker's decoder spells it (used where sms_message.raw_kept is NULL).$c$;
COMMENT ON FUNCTION sms_json_string(text) IS $c$A text as a JSON string literal, spelled exactly as Python's json.dumps(ensure_ascii=True) spells it.$c$;

COMMENT ON TABLE sync_cursor IS $c$One row per account: where the next run resumes.$c$;
COMMENT ON COLUMN sync_cursor.account_name IS $c$Primary key.$c$;
COMMENT ON COLUMN sync_cursor.next_token IS $c$The next token of the last committed block; sending it acknowledges that block. NULL = start at the head of the queue (first run, after the final block, or after a reset).$c$;
COMMENT ON COLUMN sync_cursor.moved_at IS $c$When next_token last changed (each committed block).$c$;
COMMENT ON COLUMN sync_cursor.last_success_at IS $c$When a run of this account last finished with outcome succeeded.$c$;
COMMENT ON COLUMN sync_cursor.last_error IS $c$The error of the most recent failed run (credentials scrubbed). Not cleared by a later success: compare last_error_at with last_success_at.$c$;
COMMENT ON COLUMN sync_cursor.last_error_at IS $c$When last_error was recorded.$c$;
COMMENT ON COLUMN sync_cursor.cleared_at IS $c$When the token was last cleared (sync-worker cursor reset, or the API rejected it).$c$;
COMMENT ON COLUMN sync_cursor.cleared_reason IS $c$Why it was cleared.$c$;

COMMENT ON TABLE sync_run IS $c$One row per account run. Retention deletes rows older than the window, in batches.$c$;
COMMENT ON COLUMN sync_run.id IS $c$Primary key (identity).$c$;
COMMENT ON COLUMN sync_run.account_name IS $c$The account.$c$;
COMMENT ON COLUMN sync_run.started_at IS $c$Start of the run.$c$;
COMMENT ON COLUMN sync_run.finished_at IS $c$End of the run; NULL while running (or if the worker died).$c$;
COMMENT ON COLUMN sync_run.blocks IS $c$Blocks committed.$c$;
COMMENT ON COLUMN sync_run.messages_received IS $c$Messages in those blocks.$c$;
COMMENT ON COLUMN sync_run.rows_inserted IS $c$New history rows.$c$;
COMMENT ON COLUMN sync_run.replays IS $c$Messages already stored (messages_received - rows_inserted): replayed blocks.$c$;
COMMENT ON COLUMN sync_run.malformed IS $c$Messages stored with problems.$c$;
COMMENT ON COLUMN sync_run.outcome IS $c$running until finished, then the sync's outcome (succeeded, quarantined, failed, interrupted, guard_tripped, ...).$c$;
COMMENT ON COLUMN sync_run.error IS $c$Why it did not succeed (credentials scrubbed).$c$;
COMMENT ON COLUMN sync_run.worker_host IS $c$Host name of the worker process.$c$;
COMMENT ON COLUMN sync_run.worker_pid IS $c$Its process id.$c$;
COMMENT ON COLUMN sync_run.quarantined IS $c$Blocks this run kept in sms_quarantine instead of storing them. A run that quarantined a block and drained the queue has outcome quarantined (once exits 5).$c$;

COMMENT ON TABLE sms_quarantine IS $c$History blocks whose body could not be read through every retry (or a readable block that failed to be stored with the same permanent error three runs in a row), kept byte for byte; the cursor moved past them in the same transaction. See "Quarantine" below.$c$;
COMMENT ON COLUMN sms_quarantine.id IS $c$Primary key (identity).$c$;
COMMENT ON COLUMN sms_quarantine.account_name IS $c$The account whose queue served the block.$c$;
COMMENT ON COLUMN sms_quarantine.run_id IS $c$The sync_run that quarantined it first (NULL if that run row was deleted).$c$;
COMMENT ON COLUMN sms_quarantine.http_status IS $c$202 (more blocks followed) or 200 (the final block).$c$;
COMMENT ON COLUMN sms_quarantine.request_token IS $c$The next token sent to obtain the block (NULL: a GET at the head of the queue).$c$;
COMMENT ON COLUMN sms_quarantine.next_token IS $c$The block's own next token from Location (NULL for a final 200); sending it acknowledged the block.$c$;
COMMENT ON COLUMN sms_quarantine.problem IS $c$What was wrong with the body. Never contains the body.$c$;
COMMENT ON COLUMN sms_quarantine.body IS $c$The body exactly as received, up to 16 MiB; longer bodies keep their first 16 MiB.$c$;
COMMENT ON COLUMN sms_quarantine.body_size IS $c$Length of the whole body in bytes; body_size > length(body) means it was cut.$c$;
COMMENT ON COLUMN sms_quarantine.body_sha256 IS $c$sha256 hex of the whole body.$c$;
COMMENT ON COLUMN sms_quarantine.received_at IS $c$When the worker received the response.$c$;
COMMENT ON COLUMN sms_quarantine.first_stored_at IS $c$When the row was written.$c$;
COMMENT ON COLUMN sms_quarantine.last_seen_at IS $c$When the same block (same body and tokens) was last quarantined again (a crash before the acknowledging request replays it).$c$;
COMMENT ON COLUMN sms_quarantine.seen_count IS $c$How many times it was quarantined (1 unless replayed).$c$;
COMMENT ON COLUMN sms_quarantine.resolved_at IS $c$When sync-worker quarantine replay read the whole block and stored its messages; NULL while unresolved.$c$;
COMMENT ON COLUMN sms_quarantine.replayed_at IS $c$When a replay last tried the block.$c$;
COMMENT ON COLUMN sms_quarantine.replay_messages IS $c$Readable messages the last replay found in the kept bytes.$c$;
COMMENT ON COLUMN sms_quarantine.replay_inserted IS $c$Of those, rows new to the history (the rest were stored already).$c$;
COMMENT ON COLUMN sms_quarantine.replay_problem IS $c$Why the last replay could not read the whole block (NULL when resolved or never replayed).$c$;

COMMENT ON TABLE sync_block_failure IS $c$One row per account whose last run failed to store a readable block with a permanent error; three runs in a row on the same block and error kind quarantine it. A successful run deletes the row.$c$;
COMMENT ON COLUMN sync_block_failure.account_name IS $c$Primary key.$c$;
COMMENT ON COLUMN sync_block_failure.request_token IS $c$The next token that fetched the failing block (NULL: the head of the queue).$c$;
COMMENT ON COLUMN sync_block_failure.body_sha256 IS $c$sha256 hex of the block's body.$c$;
COMMENT ON COLUMN sync_block_failure.error_kind IS $c$Class name of the error (the streak continues only while it stays the same).$c$;
COMMENT ON COLUMN sync_block_failure.error IS $c$The last error text (credentials scrubbed).$c$;
COMMENT ON COLUMN sync_block_failure.streak IS $c$Consecutive runs that failed on this block with this error kind.$c$;
COMMENT ON COLUMN sync_block_failure.first_failed_at IS $c$When the streak started.$c$;
COMMENT ON COLUMN sync_block_failure.last_failed_at IS $c$The last failure.$c$;

COMMENT ON TABLE login_guard IS $c$The login guard's record of one ThingSpace user: the presumed vendor count of failed logins (refusals, unknown outcomes, a login in flight) since the last success seen by any process. ThingSpace locks a user after five; the guard never lets it pass four.$c$;
COMMENT ON COLUMN login_guard.base_url IS $c$The platform's API base URL (with username, the primary key). '' marks a count carried over from before 0003, adopted by the user's row on first read.$c$;
COMMENT ON COLUMN login_guard.username IS $c$The ThingSpace user.$c$;
COMMENT ON COLUMN login_guard.consecutive_failures IS $c$Failed logins in a row presumed at the vendor: refused, outcome unknown, or in flight. Never above 4.$c$;
COMMENT ON COLUMN login_guard.failed_fingerprints IS $c$Salted slow hashes of the credentials that failed since the last success (never the credentials).$c$;
COMMENT ON COLUMN login_guard.last_outcome IS $c$succeeded, refused, unknown (no readable answer), throttled (429/408, not counted) or reset (auth reset).$c$;
COMMENT ON COLUMN login_guard.last_attempt_at IS $c$When the last login was started.$c$;
COMMENT ON COLUMN login_guard.last_success_at IS $c$When a login last succeeded.$c$;
COMMENT ON COLUMN login_guard.last_failure_at IS $c$When the last failure was recorded.$c$;
COMMENT ON COLUMN login_guard.last_error IS $c$What the last failure or throttle was (error class and message; credentials are never in it).$c$;
COMMENT ON COLUMN login_guard.tripped_at IS $c$When the guard first refused to attempt a login since the last success or reset.$c$;
COMMENT ON COLUMN login_guard.pending_attempt IS $c$The login in flight, already counted as failed until it reports; NULL when none.$c$;
COMMENT ON COLUMN login_guard.pending_fingerprint IS $c$The fingerprint of the credentials that login uses.$c$;
COMMENT ON COLUMN login_guard.pending_until IS $c$When that login's lease runs out: after it, the login counts as failed with an unknown outcome and others may log in.$c$;
COMMENT ON COLUMN login_guard.pending_holder IS $c$host:pid of the process making that login.$c$;

COMMENT ON TABLE schema_migrations IS $c$Applied migrations, written by sync-worker migrate.$c$;
COMMENT ON COLUMN schema_migrations.version IS $c$NNNN from the file name (primary key).$c$;
COMMENT ON COLUMN schema_migrations.name IS $c$The rest of the file name.$c$;
COMMENT ON COLUMN schema_migrations.checksum IS $c$sha256 of the file when it was applied; an edited applied file is refused.$c$;
COMMENT ON COLUMN schema_migrations.applied_at IS $c$When it was applied.$c$;
