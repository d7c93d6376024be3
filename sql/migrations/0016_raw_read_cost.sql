-- 0016: reading raw_json / raw at close to the cost of the columns (issue 27, item 6). Must run on
-- PostgreSQL 15 as well as newer servers.
--
-- sms_json_string (0006) was a SQL function with a sub-SELECT (a walk over every character), and
-- sms_history_rebuild_raw a STRICT function calling it four times: neither could be inlined, so
-- every row read through sms_history.raw_json ran four SQL-function executions, ~20-30 µs a row.
-- Now:
-- * sms_json_string is one CASE without a sub-SELECT and not STRICT (the planner does not inline a
--   STRICT function whose body is not strict itself, and CASE is not), so it and the rebuild are
--   inlined into the view: text of plain printable ASCII, nearly all device ids, kinds and
--   timestamps and most texts, is quoted in place by C code, with no function call at all;
-- * any other text goes to sms_json_escape, a PL/pgSQL function that lets to_json escape what
--   JSON requires (quotes, backslashes, control characters: the same spelling as Python's) and then
--   replaces each distinct character to_json leaves raw (non-ASCII, DEL) by its \u escape, instead
--   of walking every character.
-- Same results for every text (tests/integration/test_history_v2.py compares them with the worker's
-- encoder on generated text, tests/integration/test_migration_0016.py stored rows before and after):
-- nothing stored changes, so every row reads back exactly as before and keeps its key. NULL in
-- gives NULL out, as before.

CREATE FUNCTION sms_json_escape(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    quoted text := to_json(value)::text;
    c text;
    code integer;
BEGIN
    -- Each character to_json leaves raw that ensure_ascii escapes, once however often it occurs.
    FOREACH c IN ARRAY string_to_array(regexp_replace(value, '[\x01-\x7e]+', '', 'g'), NULL) LOOP
        code := ascii(c);
        IF code < 65536 THEN
            quoted := replace(quoted, c, '\u' || lpad(to_hex(code), 4, '0'));
        ELSE
            -- Beyond the BMP: a UTF-16 surrogate pair, as Python writes it.
            quoted := replace(quoted, c, '\u' || to_hex(55232 + (code >> 10)) || '\u' || to_hex(56320 + (code & 1023)));
        END IF;
    END LOOP;
    RETURN quoted;
END
$fn$;

CREATE OR REPLACE FUNCTION sms_json_string(value text) RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE AS $fn$
    SELECT CASE WHEN value ~ '^[ !#-\[\]-~]*$' THEN '"' || value || '"' ELSE sms_json_escape(value) END
$fn$;

-- One test of all four fields together first: when they are all plain printable ASCII (device ids,
-- kinds and timestamps nearly always are; texts often), the original is the fields between quotes.
CREATE OR REPLACE FUNCTION sms_history_rebuild_raw(device_id text, device_kind text, message text, timestamp_raw text)
RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN device_id || device_kind || message || timestamp_raw ~ '^[ !#-\[\]-~]*$'
        THEN '{"deviceIds":[{"id":"' || device_id || '","kind":"' || device_kind || '"}],"message":"' || message
             || '","timestamp":"' || timestamp_raw || '"}'
        ELSE '{"deviceIds":[{"id":' || sms_json_string(device_id) || ',"kind":' || sms_json_string(device_kind)
             || '}],"message":' || sms_json_string(message) || ',"timestamp":' || sms_json_string(timestamp_raw) || '}'
    END
$fn$;

COMMENT ON FUNCTION sms_json_escape(text) IS $c$A text as a JSON string literal spelled as Python's json.dumps(ensure_ascii=True) spells it, for text that is not plain printable ASCII (sms_json_string calls it; use that).$c$;
COMMENT ON FUNCTION sms_json_string(text) IS $c$A text as a JSON string literal, spelled exactly as Python's json.dumps(ensure_ascii=True) spells it (NULL for NULL). Inlined by the planner: plain printable ASCII costs no function call.$c$;
COMMENT ON FUNCTION sms_history_rebuild_raw(text, text, text, text) IS $c$The original JSON of a one-device message from its device id, kind, text and timestamp, exactly as the worker's decoder spells it (used where sms_message.raw_kept is NULL). Inlined by the planner into the sms_history view (NULL when an argument is NULL).$c$;
COMMENT ON COLUMN sms_history.raw_json IS $c$The message exactly as received, as ASCII JSON: json.loads(raw_json) gives back the original value, including NUL, lone surrogates and NaN, which text and jsonb refuse. Computed when read for most rows (rebuilt from the fields by inlined SQL): about 1.5 µs per row when every field is plain printable ASCII, about 20 µs when the text is not, nothing more for a row that keeps its original (bench/README.md "Reading raw_json"). For bulk reads select the columns (message, device_kind, device_id, timestamp_raw, problems) and take raw_json only for the rows that need it, such as those with problems (docs/schema.md "Reading the originals in bulk").$c$;
