-- 0013: counts analysts can trust in any session time zone, one device row per distinct device,
-- and message identity at the edges (issue 27, items 1-5). Must run on PostgreSQL 15 as well as
-- newer servers.
--
-- 1. The daily-count functions stepped over timestamptz values, so d.day::date and
--    d.day + interval '1 day' were evaluated in the session's TimeZone: under America/Los_Angeles
--    every day_utc label was a day early, and in any zone with DST the windows moved after each
--    change. They now step over `timestamp` values (UTC wall-clock days) and turn each bound into an
--    instant with AT TIME ZONE 'UTC', which no session setting changes.
-- 2. A message listing one device twice (imei+imei, imei+IMEI) had two device rows and was counted
--    twice per device. The worker now writes one row per distinct (kind, id); here the extra copies
--    are deleted, positions renumbered and device_count set to the distinct count. Kind arguments of
--    the functions are case-folded (stored kinds are lower case).
-- 3-5. The key of a well-formed message now covers (rows.py, docs/schema.md "Message identity"):
--    the fraction of a second as sent when it has more than six significant digits (7-9 digit
--    timestamps were truncated to the microsecond, so distinct messages shared a key); a strictly
--    parsed timestamp only (`...Z<NUL>junk` parsed, and shared the clean message's key); and the
--    members the model does not know (a messageId ThingSpace might add). Every other key is
--    unchanged. Stored rows those rules re-key are re-keyed here, in place, so a replay of a block
--    stored before the upgrade is still absorbed:
--    * candidates are found by cheap text tests on every row (a long fraction, a timestamp the
--      strict grammar refuses though it was parsed, a kept original with more members than its
--      devices explain);
--    * for each, the key the old code computed is rebuilt from the original (raw_kept or the
--      rebuild) and checked against the stored digest: only a row whose old key is reproduced
--      exactly is re-keyed (a row it cannot reproduce keeps its key and is counted in a NOTICE);
--    * occurrence numbers are recomputed within the block that stored the row (same account,
--      first_stored_at, run): identical messages are now told apart by their full identity;
--    * a row whose new key is already held by another row (the same message stored twice from
--      two blocks under the old rule) keeps its old key: nothing is lost, and a replay lands on
--      the holder;
--    * a timestamp the strict grammar refuses moves the row to the undated partition (received_at
--      NULL) with a problem, as the worker now stores such a message.
--    sms_message_device rows and sms_callback.message_keys follow their message.
-- Stored originals (raw_kept, and everything the rebuild reads) are not touched: every row reads
-- back exactly as before. Rows are otherwise never updated; this migration is the exception.

-- 1. Day counts per UTC day in every session zone.
CREATE OR REPLACE FUNCTION sms_account_daily_counts(account text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint, malformed bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT d.day::date,
           (SELECT count(*) FROM sms_message m
            WHERE m.account_name = account
              AND m.received_at >= d.day AT TIME ZONE 'UTC'
              AND m.received_at < (d.day + interval '1 day') AT TIME ZONE 'UTC'),
           (SELECT count(*) FROM sms_message m
            WHERE m.account_name = account AND m.problems IS NOT NULL
              AND m.received_at >= d.day AT TIME ZONE 'UTC'
              AND m.received_at < (d.day + interval '1 day') AT TIME ZONE 'UTC')
    FROM generate_series(first_day::timestamp, last_day::timestamp, interval '1 day') AS d(day)
$fn$;

CREATE OR REPLACE FUNCTION sms_device_daily_counts(kind text, id text, first_day date, last_day date)
RETURNS TABLE (day_utc date, messages bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT d.day::date,
           (SELECT count(*) FROM sms_by_device b
            WHERE b.device_kind = lower(kind) AND b.device_id = id
              AND b.received_at >= d.day AT TIME ZONE 'UTC'
              AND b.received_at < (d.day + interval '1 day') AT TIME ZONE 'UTC')
    FROM generate_series(first_day::timestamp, last_day::timestamp, interval '1 day') AS d(day)
$fn$;

-- 3-5. Re-keying. The helpers below exist only while this migration runs.

-- A JSON value in the canonical form the worker hashes: json.dumps(sort_keys=True, ensure_ascii=True,
-- compact). Scalars keep their source text (the stored original is Python's own spelling of them).
CREATE FUNCTION sms_0013_canonical(value json) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
BEGIN
    CASE json_typeof(value)
    WHEN 'object' THEN
        RETURN coalesce((SELECT '{' || string_agg(sms_json_string(e.key) || ':' || sms_0013_canonical(e.value), ','
                                                  ORDER BY e.key COLLATE "C") || '}'
                         FROM json_each(value) AS e), '{}');
    WHEN 'array' THEN
        RETURN coalesce((SELECT '[' || string_agg(sms_0013_canonical(a.value), ',' ORDER BY a.n) || ']'
                         FROM json_array_elements(value) WITH ORDINALITY AS a(value, n)), '[]');
    ELSE
        RETURN value::text;
    END CASE;
END
$fn$;

-- The key basis (the canonical array without ",occurrence]") of a well-formed message, as the old
-- code (refined false) or this code (refined true) builds it; '' for a message the model finds
-- malformed (its key covers the whole original either way); NULL for one this function cannot read.
-- received_at is the old code's parse of the timestamp (NULL: it did not parse).
CREATE FUNCTION sms_0013_basis(account text, raw text, received_at timestamptz, refined boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    -- PostgreSQL's json functions refuse a \u0000 escape anywhere on the path they read: NUL
    -- escapes (only where a backslash run of even length precedes them) become a private-use
    -- escape absent from the text, and are turned back in the result.
    hole text := NULL;
    j json;
    items json;
    devices text;
    stamp text;
    stamp_json text;
    fraction text;
    extras text;
    basis text;
    swapped text;
BEGIN
    IF position('\u0000' IN raw) > 0 THEN
        FOR code IN 57344..63743 LOOP  -- U+E000..U+F8FF
            hole := '\u' || to_hex(code);
            EXIT WHEN position(hole IN raw) = 0;
        END LOOP;
        LOOP
            -- A pass cannot replace two adjacent escapes (the first consumes the character the
            -- second needs before it): repeat until nothing changes.
            swapped := regexp_replace(raw, '(^|[^\\])((\\\\)*)\\u0000', '\1\2' || replace(hole, '\', '\\'), 'g');
            EXIT WHEN swapped = raw;
            raw := swapped;
        END LOOP;
    END IF;
    j := raw::json;
    IF json_typeof(j) IS DISTINCT FROM 'object' THEN
        RETURN '';
    END IF;
    items := j -> 'deviceIds';
    IF json_typeof(items) IS DISTINCT FROM 'array' OR json_array_length(items) = 0
       OR json_typeof(j -> 'message') IS DISTINCT FROM 'string'
       OR json_typeof(j -> 'timestamp') IS DISTINCT FROM 'string'
       OR EXISTS (SELECT 1 FROM json_array_elements(items) AS e(item)
                  WHERE json_typeof(e.item) <> 'object'
                     OR json_typeof(e.item -> 'id') IS DISTINCT FROM 'string'
                     OR json_typeof(e.item -> 'kind') IS DISTINCT FROM 'string') THEN
        RETURN '';
    END IF;

    SELECT '[' || string_agg('[' || sms_json_string(d.kind) || ',' || d.id_json
                             || CASE WHEN d.more <> '' THEN ',' || d.more ELSE '' END || ']', ','
                             ORDER BY d.kind COLLATE "C", d.id COLLATE "C", d.more COLLATE "C") || ']'
    INTO devices
    FROM (
        SELECT lower((e.item ->> 'kind') COLLATE "C") AS kind,
               e.item ->> 'id' AS id,
               (e.item -> 'id')::text AS id_json,
               CASE WHEN refined THEN coalesce(
                   (SELECT '{' || string_agg(sms_json_string(m.key) || ':' || sms_0013_canonical(m.value), ','
                                             ORDER BY m.key COLLATE "C") || '}'
                    FROM json_each(e.item) AS m
                    WHERE m.key NOT IN ('id', 'kind') AND json_typeof(m.value) <> 'null'), '')
               ELSE '' END AS more
        FROM json_array_elements(items) AS e(item)
    ) AS d;

    stamp := (j -> 'timestamp')::text;
    IF received_at IS NULL
       OR (refined AND stamp !~ ('^"(' || '[0-9]{4}-[0-9]{2}-[0-9]{2}'
            || '([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || '|[0-9]{8}'
            || '(T[0-9]{2}([0-9]{2}([0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || ')"$')) THEN
        stamp_json := stamp;
    ELSE
        stamp_json := to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS');
        fraction := rtrim(substring(stamp FROM '[.,]([0-9]+)'), '0');
        IF refined AND length(fraction) > 6 THEN
            stamp_json := '"' || stamp_json || '.' || fraction || '+00:00"';
        ELSIF extract(microseconds FROM received_at AT TIME ZONE 'UTC')::bigint % 1000000 <> 0 THEN
            stamp_json := '"' || stamp_json || '.' || to_char(received_at AT TIME ZONE 'UTC', 'US') || '+00:00"';
        ELSE
            stamp_json := '"' || stamp_json || '+00:00"';
        END IF;
    END IF;

    IF refined THEN
        SELECT '{' || string_agg(sms_json_string(m.key) || ':' || sms_0013_canonical(m.value), ','
                                 ORDER BY m.key COLLATE "C") || '}'
        INTO extras
        FROM json_each(j) AS m
        WHERE m.key NOT IN ('deviceIds', 'message', 'timestamp', 'accountName') AND json_typeof(m.value) <> 'null';
    END IF;

    basis := '["sms-v1",' || sms_json_string(account) || ',' || devices || ',' || stamp_json || ','
             || (j -> 'message')::text || coalesce(',' || extras, '');
    IF hole IS NOT NULL THEN
        basis := replace(basis, hole, '\u0000');
    END IF;
    RETURN basis;
EXCEPTION WHEN OTHERS THEN
    -- Text PostgreSQL cannot read (a lone surrogate, a non-finite number): the row keeps its key.
    RETURN NULL;
END
$fn$;

CREATE TEMPORARY TABLE sms_0013_candidate ON COMMIT DROP AS
SELECT m.account_name, m.received_at, m.first_stored_at, m.run_id, m.pushed, m.message_key, m.occurrence,
       m.problems,
       coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message, m.timestamp_raw)) AS raw,
       m.received_at IS NOT NULL AND m.timestamp_raw !~ ('^(' || '[0-9]{4}-[0-9]{2}-[0-9]{2}'
            || '([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || '|[0-9]{8}'
            || '(T[0-9]{2}([0-9]{2}([0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || ')$') AS refused_stamp
FROM sms_message m
WHERE (m.received_at IS NOT NULL AND m.timestamp_raw ~ '[.,][0-9]{6}0*[1-9]')
   OR (m.received_at IS NOT NULL AND m.timestamp_raw !~ ('^(' || '[0-9]{4}-[0-9]{2}-[0-9]{2}'
            || '([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || '|[0-9]{8}'
            || '(T[0-9]{2}([0-9]{2}([0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?'
            || ')$'))
   -- A kept original with more member names ('":') than three plus two per device has members the
   -- model does not know (or a quote-colon inside a text: a false alarm the basis check settles).
   OR (m.raw_kept IS NOT NULL
       AND (length(m.raw_kept) - length(replace(m.raw_kept, '":', ''))) / 2 > 3 + 2 * m.device_count);

-- The blocks those rows came from, every row of them with its old and new basis. Only rows whose
-- old basis reproduces the stored key take part.
CREATE TEMPORARY TABLE sms_0013_block_row ON COMMIT DROP AS
WITH blocks AS (
    SELECT DISTINCT account_name, received_at, first_stored_at, run_id, pushed FROM sms_0013_candidate
),
block_rows AS (
    SELECT m.account_name, m.received_at, m.first_stored_at, m.message_key, m.occurrence, m.problems,
           coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message, m.timestamp_raw))
               AS raw
    FROM blocks b
    JOIN sms_message m
      -- Equality on (account_name, received_at) first: the unique key's index finds the few rows.
      ON m.account_name = b.account_name AND m.received_at = b.received_at
     AND m.first_stored_at = b.first_stored_at AND m.run_id IS NOT DISTINCT FROM b.run_id AND m.pushed = b.pushed
    UNION ALL
    SELECT m.account_name, m.received_at, m.first_stored_at, m.message_key, m.occurrence, m.problems,
           coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message, m.timestamp_raw))
    FROM blocks b
    JOIN sms_message m
      ON m.account_name = b.account_name AND m.received_at IS NULL AND b.received_at IS NULL
     AND m.first_stored_at = b.first_stored_at AND m.run_id IS NOT DISTINCT FROM b.run_id AND m.pushed = b.pushed
),
based AS (
    SELECT r.*, sms_0013_basis(r.account_name, r.raw, r.received_at, false) AS old_basis,
           sms_0013_basis(r.account_name, r.raw, r.received_at, true) AS new_basis
    FROM block_rows r
)
SELECT b.*,
       b.old_basis <> ''
       AND sha256(convert_to(b.old_basis || ',' || b.occurrence || ']', 'UTF8')) = b.message_key AS verified
FROM based b;

-- New occurrence: the rank among the block's rows of the same new basis (they share the old one),
-- in the order the old code numbered them.
CREATE TEMPORARY TABLE sms_0013_rekey ON COMMIT DROP AS
WITH renumbered AS (
    SELECT r.*,
           (row_number() OVER (PARTITION BY r.account_name, r.received_at, r.first_stored_at, r.new_basis
                               ORDER BY r.occurrence) - 1)::integer AS new_occurrence
    FROM sms_0013_block_row r
    WHERE r.verified
      AND r.old_basis IN (SELECT s.old_basis FROM sms_0013_block_row s
                          WHERE s.verified AND s.new_basis <> s.old_basis
                            AND s.account_name = r.account_name AND s.first_stored_at = r.first_stored_at)
)
SELECT n.account_name, n.received_at AS old_received_at, n.message_key AS old_key,
       CASE WHEN c.refused_stamp THEN NULL ELSE n.received_at END AS new_received_at,
       sha256(convert_to(n.new_basis || ',' || n.new_occurrence || ']', 'UTF8')) AS new_key,
       n.new_occurrence, n.new_basis <> n.old_basis AS refined,
       CASE WHEN c.refused_stamp THEN
           array_remove(coalesce(n.problems, '{}'), 'timestamp has no UTC offset; read as UTC')
           || ARRAY['timestamp is not ISO-8601 (strict reading since migration 0013); received_at left NULL']
       ELSE n.problems END AS new_problems
FROM renumbered n
LEFT JOIN sms_0013_candidate c
  ON c.account_name = n.account_name AND c.message_key = n.message_key
 AND (c.received_at = n.received_at OR (c.received_at IS NULL AND n.received_at IS NULL))
WHERE n.new_occurrence <> n.occurrence OR n.new_basis <> n.old_basis OR c.refused_stamp;

-- A malformed message (its key covers the whole original) with a refused timestamp keeps its key
-- and moves to the undated partition.
INSERT INTO sms_0013_rekey
SELECT c.account_name, c.received_at, c.message_key, NULL, c.message_key, c.occurrence, true,
       array_remove(coalesce(c.problems, '{}'), 'timestamp has no UTC offset; read as UTC')
       || ARRAY['timestamp is not ISO-8601 (strict reading since migration 0013); received_at left NULL']
FROM sms_0013_candidate c
WHERE c.refused_stamp AND sms_0013_basis(c.account_name, c.raw, c.received_at, false) = '';

CREATE TEMPORARY TABLE sms_0013_moved (
    account_name text, old_received_at timestamptz, old_key bytea, new_received_at timestamptz, new_key bytea
) ON COMMIT DROP;

-- One row at a time: re-keyed originals first (their new keys are new), then renumbered copies in
-- ascending occurrence (each takes a number a re-keyed row just left). A key already held stays
-- with its holder.
DO $do$
DECLARE
    r record;
    moved integer := 0;
    kept integer := 0;
    unread integer;
BEGIN
    FOR r IN SELECT * FROM sms_0013_rekey ORDER BY refined DESC, new_occurrence LOOP
        BEGIN
            IF r.old_received_at IS NULL THEN
                UPDATE sms_message
                SET message_key = r.new_key, received_at = r.new_received_at, occurrence = r.new_occurrence,
                    problems = NULLIF(r.new_problems, '{}')
                WHERE account_name = r.account_name AND received_at IS NULL AND message_key = r.old_key;
            ELSE
                UPDATE sms_message
                SET message_key = r.new_key, received_at = r.new_received_at, occurrence = r.new_occurrence,
                    problems = NULLIF(r.new_problems, '{}')
                WHERE account_name = r.account_name AND received_at = r.old_received_at AND message_key = r.old_key;
            END IF;
            INSERT INTO sms_0013_moved VALUES (r.account_name, r.old_received_at, r.old_key, r.new_received_at, r.new_key);
            moved := moved + 1;
        EXCEPTION WHEN unique_violation THEN
            kept := kept + 1;
        END;
    END LOOP;
    SELECT count(*) INTO unread FROM sms_0013_block_row b
    WHERE b.old_basis IS NULL OR (b.old_basis <> '' AND NOT b.verified AND b.new_basis IS DISTINCT FROM b.old_basis);
    RAISE NOTICE '0013: % rows re-keyed, % kept their key (new key already stored), % well-formed rows whose old key could not be reproduced kept it',
        moved, kept, unread;
END
$do$;

UPDATE sms_message_device d
SET message_key = v.new_key, received_at = v.new_received_at, problems = m.problems
FROM sms_0013_moved v
JOIN sms_message m ON m.account_name = v.account_name AND m.message_key = v.new_key
 AND (m.received_at = v.new_received_at OR (m.received_at IS NULL AND v.new_received_at IS NULL))
WHERE d.account_name = v.account_name AND d.message_key = v.old_key
  AND (d.received_at = v.old_received_at OR (d.received_at IS NULL AND v.old_received_at IS NULL));

UPDATE sms_callback c
SET message_keys = (
    SELECT array_agg(coalesce(encode(v.new_key, 'hex'), k.key) ORDER BY k.n)
    FROM unnest(c.message_keys) WITH ORDINALITY AS k(key, n)
    LEFT JOIN sms_0013_moved v ON v.account_name = c.account_name AND encode(v.old_key, 'hex') = k.key
)
WHERE c.message_keys && (SELECT array_agg(encode(old_key, 'hex')) FROM sms_0013_moved WHERE old_key <> new_key);

DROP FUNCTION sms_0013_basis(text, text, timestamptz, boolean);
DROP FUNCTION sms_0013_canonical(json);

-- 2. One device row per distinct (kind, id): copies of the first device, then of an earlier one.
DELETE FROM sms_message_device d
USING sms_message m
WHERE m.account_name = d.account_name AND m.message_key = d.message_key
  AND (m.received_at = d.received_at OR (m.received_at IS NULL AND d.received_at IS NULL))
  AND m.device_kind = d.device_kind AND m.device_id = d.device_id;

DELETE FROM sms_message_device d
USING sms_message_device e
WHERE e.account_name = d.account_name AND e.message_key = d.message_key
  AND (e.received_at = d.received_at OR (e.received_at IS NULL AND d.received_at IS NULL))
  AND e.device_kind = d.device_kind AND e.device_id = d.device_id AND e.position < d.position;

UPDATE sms_message_device d
SET position = r.renumbered
FROM (
    SELECT account_name, received_at, message_key, position,
           row_number() OVER (PARTITION BY account_name, received_at, message_key ORDER BY position)::integer
               AS renumbered
    FROM sms_message_device
) AS r
WHERE d.account_name = r.account_name AND d.message_key = r.message_key
  AND (d.received_at = r.received_at OR (d.received_at IS NULL AND r.received_at IS NULL))
  AND d.position = r.position AND d.position <> r.renumbered;

UPDATE sms_message m
SET device_count = c.distinct_devices
FROM (
    SELECT m2.account_name, m2.received_at, m2.message_key, 1 + count(d.position)::integer AS distinct_devices
    FROM sms_message m2
    LEFT JOIN sms_message_device d
      ON d.account_name = m2.account_name AND d.message_key = m2.message_key
     AND (d.received_at = m2.received_at OR (d.received_at IS NULL AND m2.received_at IS NULL))
    WHERE m2.device_count > 1
    GROUP BY 1, 2, 3
) AS c
WHERE m.account_name = c.account_name AND m.message_key = c.message_key
  AND (m.received_at = c.received_at OR (m.received_at IS NULL AND c.received_at IS NULL))
  AND m.device_count <> c.distinct_devices;

COMMENT ON FUNCTION sms_account_daily_counts(text, date, date) IS $c$Messages (and malformed ones) of one account per UTC day from first_day to last_day inclusive, 0 for days without messages; the same in every session TimeZone. Index-backed: SELECT * FROM sms_account_daily_counts('0252012345-00001', '2024-05-01', '2024-05-31').$c$;
COMMENT ON FUNCTION sms_device_daily_counts(text, text, date, date) IS $c$Messages of one device (kind in any letter case, id) per UTC day from first_day to last_day inclusive, over every account, each message once however often it lists the device, 0 for days without messages; the same in every session TimeZone. Index-backed.$c$;
COMMENT ON COLUMN sms_message.device_count IS $c$Number of distinct well-formed devices (kind case-folded, id) the message names (the first is in this row, the others in sms_message_device); raw_json keeps the list as sent.$c$;
COMMENT ON COLUMN sms_message.received_at IS $c$The API's timestamp, parsed, in UTC, to the microsecond (the key keeps every digit sent); the partition key. NULL when missing or not a strict ISO-8601 timestamp (docs/schema.md "Message identity"). A timestamp without offset is read as UTC (and problems says so).$c$;
COMMENT ON COLUMN sms_message_device.position IS $c$0-based position among the message's distinct well-formed devices (1 or more here).$c$;
COMMENT ON TABLE sms_message_device IS $c$The second, third, ... distinct devices of messages that name several (the first is in sms_message), with copies of the message fields the sms_by_device view shows. A device listed twice (in any letter case) has one row. Partitioned like sms_message.$c$;
COMMENT ON COLUMN sms_history.device_count IS $c$Number of distinct well-formed devices (all of them are in sms_by_device, once each).$c$;
COMMENT ON COLUMN sms_history.received_at IS $c$The API's timestamp, parsed, in UTC, to the microsecond; NULL when missing or not a strict ISO-8601 timestamp.$c$;
COMMENT ON VIEW sms_by_device IS $c$One row per message per distinct well-formed device (a message without one appears once, with NULL device columns): the way to ask about a device. Kinds are stored lower case. Filtering on device_kind and device_id and ordering by received_at walks the device indexes of every partition (no sort).$c$;
