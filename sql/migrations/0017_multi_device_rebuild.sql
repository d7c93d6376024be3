-- 0017: the originals of multi-device messages rebuilt byte for byte too (issue 27, item 7). Must run
-- on PostgreSQL 15 as well as newer servers.
--
-- Until now the rebuild (sms_history_rebuild_raw) covered one-device messages only: every message
-- listing two or more device ids kept its whole original in raw_kept (~230 bytes on such traffic,
-- 41% of the rows on the mixed traffic of bench/README.md "Traffic shapes"). Now sms_message has
-- raw_devices: the text of the deviceIds items after the first, exactly as received, from the comma
-- before the second ('...,{"id":"5551234567","kind":"msisdn"}'); the rebuild puts it after the first
-- device, which the row's own columns give. The items after the first are kept as sent (any kind
-- case, any key order, a device listed twice): only the first device, the keys' order and the other
-- fields must be what the rebuild writes. The rebuild stays one inlinable expression (the plain
-- ASCII test covers the four fields; raw_devices is already ASCII JSON text and is concatenated as
-- it is), so reading raw_json costs what it cost for a one-device row.
--
-- Reading raw_json of a rebuilt row whose text is not plain printable ASCII (accents, other scripts,
-- emoji: 40% of the simulator's texts, 75% of the mixed shape's) ran the PL/pgSQL escape per row,
-- ~20 µs against ~1.5 µs for plain text (issue 27, item 6). sms_message now has message_json: the
-- text's JSON string literal, spelt as the original spells it, for those rows only (the writer has it
-- already: it hashes it); the rebuild reads it instead of escaping. It costs its length where it is
-- stored, ~47 bytes, ~19 bytes per message on the simulator's traffic (bench/README.md "Traffic
-- shapes" has the figures per shape).
--
-- Stored rows move in place: a kept original whose text is the rebuild of its own columns around
-- some raw_devices (found by comparing the head and the tail, then checked whole against the
-- rebuild) drops raw_kept and keeps raw_devices. The check is equality with the original, so
-- raw_json reads back exactly as before; keys, devices and every other column are untouched. Then
-- every rebuilt row whose text is not plain ASCII gets message_json from sms_json_string, the very
-- function the rebuild called for it, so it reads back the same. The UPDATEs rewrite those rows (a
-- VACUUM afterwards returns their old space to the tables).

ALTER TABLE sms_message ADD COLUMN raw_devices text;
ALTER TABLE sms_message ADD COLUMN message_json text;

-- The plain ASCII test covers the id, the kind, the timestamp and the text unless message_json
-- (already a JSON literal) stands for the text.
CREATE FUNCTION sms_history_rebuild_raw(device_id text, device_kind text, message text, timestamp_raw text,
                                        raw_devices text, message_json text)
RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN device_id || device_kind || timestamp_raw || CASE WHEN message_json IS NULL THEN message ELSE '' END
             ~ '^[ !#-\[\]-~]*$'
        THEN '{"deviceIds":[{"id":"' || device_id || '","kind":"' || device_kind || '"}' || coalesce(raw_devices, '')
             || '],"message":' || coalesce(message_json, '"' || message || '"') || ',"timestamp":"' || timestamp_raw
             || '"}'
        ELSE '{"deviceIds":[{"id":' || sms_json_string(device_id) || ',"kind":' || sms_json_string(device_kind)
             || '}' || coalesce(raw_devices, '') || '],"message":' || coalesce(message_json, sms_json_string(message))
             || ',"timestamp":' || sms_json_string(timestamp_raw) || '}'
    END
$fn$;

-- Same columns, names and types as before (CREATE OR REPLACE keeps their comments); only the
-- rebuild reads raw_devices.
CREATE OR REPLACE VIEW sms_history AS
SELECT m.account_name,
       encode(m.message_key, 'hex') AS message_key,
       m.occurrence,
       m.device_kind,
       m.device_id,
       m.device_count,
       m.message,
       m.received_at,
       m.timestamp_raw,
       coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message, m.timestamp_raw,
                                                    m.raw_devices, m.message_json)) AS raw_json,
       CASE WHEN m.raw_is_jsonb
            THEN coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message,
                                                              m.timestamp_raw, m.raw_devices, m.message_json))::jsonb
       END AS raw,
       coalesce(m.problems, '{}') AS problems,
       m.first_stored_at,
       m.run_id,
       CASE WHEN m.pushed THEN 'push' ELSE 'poll' END AS source
FROM sms_message m;

WITH kept AS (
    SELECT m.tableoid, m.ctid, m.raw_kept, m.device_id, m.device_kind, m.message, m.timestamp_raw,
           '{"deviceIds":[{"id":' || sms_json_string(m.device_id) || ',"kind":' || sms_json_string(m.device_kind)
               || '}' AS head,
           '],"message":' || sms_json_string(m.message) || ',"timestamp":' || sms_json_string(m.timestamp_raw)
               || '}' AS tail
    FROM sms_message m
    WHERE m.raw_kept IS NOT NULL AND m.device_id IS NOT NULL AND m.message IS NOT NULL
      AND m.timestamp_raw IS NOT NULL
),
rebuilt AS (
    SELECT k.tableoid, k.ctid, k.raw_kept,
           substr(k.raw_kept, length(k.head) + 1, length(k.raw_kept) - length(k.head) - length(k.tail))
               AS raw_devices,
           k.device_id, k.device_kind, k.message, k.timestamp_raw
    FROM kept k
    WHERE length(k.raw_kept) > length(k.head) + length(k.tail)
      AND left(k.raw_kept, length(k.head)) = k.head
      AND right(k.raw_kept, length(k.tail)) = k.tail
      AND substr(k.raw_kept, length(k.head) + 1, 1) = ','
)
UPDATE sms_message m
SET raw_kept = NULL, raw_devices = r.raw_devices
FROM rebuilt r
WHERE m.tableoid = r.tableoid AND m.ctid = r.ctid
  -- The guarantee itself: NULL only where the view's rebuild gives back the original exactly.
  AND sms_history_rebuild_raw(r.device_id, r.device_kind, r.message, r.timestamp_raw, r.raw_devices, NULL)
      = r.raw_kept;

UPDATE sms_message
SET message_json = sms_json_string(message)
WHERE raw_kept IS NULL AND message !~ '^[ !#-\[\]-~]*$';

COMMENT ON COLUMN sms_message.raw_devices IS $c$The devices after the first, exactly as received: the text of the original's deviceIds items after the first one, from the comma before the second (,{"id":"5551234567","kind":"msisdn"}), kept when the original is rebuilt from the fields (raw_kept NULL) and lists more than one item; NULL otherwise. sms_history.raw_json puts it back after the first device.$c$;
COMMENT ON COLUMN sms_message.raw_kept IS $c$The message exactly as received (ASCII JSON), kept only when sms_history_rebuild_raw cannot rebuild it byte for byte from the fields and raw_devices; NULL otherwise. Read sms_history.raw_json, which is always the original.$c$;
COMMENT ON COLUMN sms_message.message_json IS $c$The text as a JSON string literal, exactly as the original spells it (\u escapes), kept when the original is rebuilt from the fields (raw_kept NULL) and the text is not plain printable ASCII, so reading raw_json escapes nothing; NULL otherwise.$c$;
COMMENT ON FUNCTION sms_history_rebuild_raw(text, text, text, text, text, text) IS $c$The original JSON of a message from its first device's id and kind, its text, its timestamp, raw_devices (the other devices' items as sent; NULL for one device) and message_json (the text already as a JSON literal, or NULL), exactly as the worker's decoder spells it (used where sms_message.raw_kept is NULL). Inlined by the planner into the sms_history view (NULL when one of the first four arguments is NULL).$c$;
COMMENT ON COLUMN sms_history.raw_json IS $c$The message exactly as received, as ASCII JSON: json.loads(raw_json) gives back the original value, including NUL, lone surrogates and NaN, which text and jsonb refuse. Computed when read for most rows (rebuilt from the fields, raw_devices and message_json by inlined SQL): about 1.5 µs per row beyond reading message, nothing more for a row that keeps its original (bench/README.md "Traffic shapes"). For bulk reads select the columns (message, device_kind, device_id, timestamp_raw, problems) and take raw_json only for the rows that need it, such as those with problems (docs/schema.md "Reading the originals in bulk").$c$;
