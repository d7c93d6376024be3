-- 0018: the second and third devices of a message in its own row (issue 27, bytes on multi-device
-- traffic). Must run on PostgreSQL 15 as well as newer servers.
--
-- Until now every device after a message's first had an sms_message_device row: ~187 bytes of heap
-- (a copy of the text, timestamp and problems, the key, the account), a 71-byte entry of the ordered
-- (device_kind, device_id, received_at) index and a first_stored_at entry; and raw_devices kept the
-- items' text (~39 bytes each) for the rebuild. A message of three ids cost ~1000 bytes.
--
-- Now devices 2 and 3 (positions 1 and 2 among the distinct devices) are nullable columns of
-- sms_message (NULL costs a bit of the null bitmap the row has anyway), each with a partial b-tree on
-- (kind, id, received_at) like the first device's: every device query stays an ordered index walk
-- with no sort, on PostgreSQL 15 as on newer servers. (An index on (kind, id) alone, which b-tree
-- deduplication would keep to a 6-byte pointer per message of a busy device, leaves devices 2 and 3
-- unordered by time; PostgreSQL 15 cannot then merge the branches of sms_by_device in time order and
-- sorts every message of the device, the first-device ones included: measured in docs/schema.md
-- "Several devices per message".) The 4th and later devices stay in sms_message_device.
--
-- raw_devices is kept only when the items after the first are not exactly what the rebuild writes
-- from the new columns (,{"id":"...","kind":"..."} for devices 2 and 3, spelt as json.dumps spells
-- them): an upper-case kind, kind first, a device listed twice, an extra member, a 4th device. The
-- guarantee is unchanged: raw_kept NULL only where the rebuild gives back the original exactly.
--
-- sms_by_device keeps its columns and rows: the devices 2 and 3 are two more UNION ALL branches over
-- sms_message, and rows without such a device are filtered by the outer WHERE on a column the view
-- does not show (a branch with a WHERE of its own would not be flattened into the partitions' append,
-- and the device filters would not reach its index). A filter on device_kind and device_id reaches
-- each branch's index.
--
-- Stored rows move in place: device rows at positions 1 and 2 go into the columns of their message
-- (found by account, key and received_at) and are deleted; raw_devices is dropped where the rebuild
-- from the columns equals it. Keys, first_stored_at, positions and every original are unchanged
-- (tests/integration/test_migration_0018.py). The UPDATE rewrites the multi-device rows: a VACUUM
-- afterwards lets later inserts reuse their old versions' space, VACUUM FULL (or pg_repack) returns it
-- to the system. Measured on the PostgreSQL 15 service with 100,000 three-ids messages stored by the
-- 0017 code: the migration took 2.2 s; 989 bytes per message before, 1125 after it and VACUUM, 535
-- after VACUUM FULL of the history partitions.

ALTER TABLE sms_message
    ADD COLUMN device2_kind text,
    ADD COLUMN device2_id text,
    ADD COLUMN device3_kind text,
    ADD COLUMN device3_id text;

-- The rebuild with devices 2 and 3 from the columns when raw_devices is NULL. One plain ASCII test
-- covers every field the fast branch quotes in place.
CREATE FUNCTION sms_history_rebuild_raw(device_id text, device_kind text, message text, timestamp_raw text,
                                        raw_devices text, message_json text, device2_kind text,
                                        device2_id text, device3_kind text, device3_id text)
RETURNS text
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN device_id || device_kind || timestamp_raw || CASE WHEN message_json IS NULL THEN message ELSE '' END
             || CASE WHEN raw_devices IS NULL
                     THEN coalesce(device2_id || device2_kind, '') || coalesce(device3_id || device3_kind, '')
                     ELSE '' END
             ~ '^[ !#-\[\]-~]*$'
        THEN '{"deviceIds":[{"id":"' || device_id || '","kind":"' || device_kind || '"}'
             || coalesce(raw_devices,
                         coalesce(',{"id":"' || device2_id || '","kind":"' || device2_kind || '"}', '')
                         || coalesce(',{"id":"' || device3_id || '","kind":"' || device3_kind || '"}', ''))
             || '],"message":' || coalesce(message_json, '"' || message || '"') || ',"timestamp":"' || timestamp_raw
             || '"}'
        ELSE '{"deviceIds":[{"id":' || sms_json_string(device_id) || ',"kind":' || sms_json_string(device_kind)
             || '}'
             || coalesce(raw_devices,
                         coalesce(',{"id":' || sms_json_string(device2_id) || ',"kind":'
                                  || sms_json_string(device2_kind) || '}', '')
                         || coalesce(',{"id":' || sms_json_string(device3_id) || ',"kind":'
                                     || sms_json_string(device3_kind) || '}', ''))
             || '],"message":' || coalesce(message_json, sms_json_string(message))
             || ',"timestamp":' || sms_json_string(timestamp_raw) || '}'
    END
$fn$;

-- Stored rows: devices at positions 1 and 2 into their message's row, raw_devices dropped where the
-- rebuild from the columns is the same text. One UPDATE per row (the rows are rewritten once).
WITH extra AS (
    SELECT d.account_name, d.message_key, d.received_at,
           max(d.device_kind) FILTER (WHERE d.position = 1) AS kind2,
           max(d.device_id) FILTER (WHERE d.position = 1) AS id2,
           max(d.device_kind) FILTER (WHERE d.position = 2) AS kind3,
           max(d.device_id) FILTER (WHERE d.position = 2) AS id3
    FROM sms_message_device d
    WHERE d.position IN (1, 2)
    GROUP BY d.account_name, d.message_key, d.received_at
)
UPDATE sms_message m
SET device2_kind = e.kind2, device2_id = e.id2, device3_kind = e.kind3, device3_id = e.id3,
    raw_devices = CASE
        WHEN m.raw_devices = coalesce(',{"id":' || sms_json_string(e.id2) || ',"kind":' || sms_json_string(e.kind2)
                                      || '}', '')
                             || coalesce(',{"id":' || sms_json_string(e.id3) || ',"kind":'
                                         || sms_json_string(e.kind3) || '}', '')
        THEN NULL ELSE m.raw_devices END
FROM extra e
WHERE m.account_name = e.account_name AND m.message_key = e.message_key
  AND m.received_at IS NOT DISTINCT FROM e.received_at;

DELETE FROM sms_message_device WHERE position IN (1, 2);

CREATE INDEX sms_message_device2_idx ON sms_message (device2_kind, device2_id, received_at) WHERE device2_id IS NOT NULL;
CREATE INDEX sms_message_device3_idx ON sms_message (device3_kind, device3_id, received_at) WHERE device3_id IS NOT NULL;

-- Same columns, names and types as before (CREATE OR REPLACE keeps their comments).
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
                                                    m.raw_devices, m.message_json, m.device2_kind, m.device2_id,
                                                    m.device3_kind, m.device3_id)) AS raw_json,
       CASE WHEN m.raw_is_jsonb
            THEN coalesce(m.raw_kept, sms_history_rebuild_raw(m.device_id, m.device_kind, m.message,
                                                              m.timestamp_raw, m.raw_devices, m.message_json,
                                                              m.device2_kind, m.device2_id, m.device3_kind,
                                                              m.device3_id))::jsonb
       END AS raw,
       coalesce(m.problems, '{}') AS problems,
       m.first_stored_at,
       m.run_id,
       CASE WHEN m.pushed THEN 'push' ELSE 'poll' END AS source
FROM sms_message m;

CREATE OR REPLACE VIEW sms_by_device AS
SELECT u.account_name, u.message_key, u.position, u.device_kind, u.device_id, u.message, u.received_at,
       u.timestamp_raw, u.problems, u.first_stored_at
FROM (
    SELECT m.account_name,
           encode(m.message_key, 'hex') AS message_key,
           CASE WHEN m.device_id IS NOT NULL THEN 0 END AS position,
           m.device_kind,
           m.device_id,
           m.message,
           m.received_at,
           m.timestamp_raw,
           coalesce(m.problems, '{}') AS problems,
           m.first_stored_at,
           true AS listed
    FROM sms_message m
    UNION ALL
    SELECT m.account_name, encode(m.message_key, 'hex'), 1, m.device2_kind, m.device2_id, m.message,
           m.received_at, m.timestamp_raw, coalesce(m.problems, '{}'), m.first_stored_at,
           m.device2_id IS NOT NULL
    FROM sms_message m
    UNION ALL
    SELECT m.account_name, encode(m.message_key, 'hex'), 2, m.device3_kind, m.device3_id, m.message,
           m.received_at, m.timestamp_raw, coalesce(m.problems, '{}'), m.first_stored_at,
           m.device3_id IS NOT NULL
    FROM sms_message m
    UNION ALL
    SELECT d.account_name, encode(d.message_key, 'hex'), d.position, d.device_kind, d.device_id, d.message,
           d.received_at, d.timestamp_raw, coalesce(d.problems, '{}'), d.first_stored_at, true
    FROM sms_message_device d
) u
-- Folds to true in the branches whose every row is listed; a filter on the other two.
WHERE u.listed;

COMMENT ON COLUMN sms_message.device2_kind IS $c$Kind (lower case) of the message's second distinct well-formed device; NULL when it names fewer.$c$;
COMMENT ON COLUMN sms_message.device2_id IS $c$Id of the second distinct device, as received; NULL when the message names fewer. Indexed by (device2_kind, device2_id, received_at), as the first device is (sms_by_device finds it).$c$;
COMMENT ON COLUMN sms_message.device3_kind IS $c$Kind (lower case) of the third distinct well-formed device; NULL when the message names fewer.$c$;
COMMENT ON COLUMN sms_message.device3_id IS $c$Id of the third distinct device, as received; NULL when the message names fewer. Indexed by (device3_kind, device3_id, received_at).$c$;
COMMENT ON COLUMN sms_message.device_count IS $c$Number of distinct well-formed devices (kind case-folded, id) the message names (the first in device_kind/device_id, the second and third in device2_*/device3_*, any others in sms_message_device); raw_json keeps the list as sent.$c$;
COMMENT ON COLUMN sms_message.raw_devices IS $c$The devices after the first, exactly as received: the text of the original's deviceIds items after the first one, from the comma before the second (,{"id":"5551234567","kind":"msisdn"}), kept when the original is rebuilt from the fields (raw_kept NULL) and those items are not exactly what the rebuild writes from device2_*/device3_* (an upper-case kind, kind first, a device listed twice, an extra member, a 4th device); NULL otherwise. sms_history.raw_json puts the devices after the first back from it or from those columns.$c$;
COMMENT ON COLUMN sms_message.raw_kept IS $c$The message exactly as received (ASCII JSON), kept only when sms_history_rebuild_raw cannot rebuild it byte for byte from the fields, the device columns and raw_devices; NULL otherwise. Read sms_history.raw_json, which is always the original.$c$;
COMMENT ON TABLE sms_message_device IS $c$The fourth, fifth, ... distinct devices of messages that name more than three (the first three are in sms_message), with copies of the message fields the sms_by_device view shows. A device listed twice (in any letter case) has one row. Partitioned like sms_message.$c$;
COMMENT ON COLUMN sms_message_device.position IS $c$0-based position among the message's distinct well-formed devices (3 or more here; rows stored before migration 0018 at 1 and 2 moved into sms_message).$c$;
COMMENT ON FUNCTION sms_history_rebuild_raw(text, text, text, text, text, text, text, text, text, text) IS $c$The original JSON of a message from its first device's id and kind, its text, its timestamp, raw_devices (the other devices' items as sent, or NULL: then the second and third devices' columns, spelt as the worker's decoder spells them), message_json (the text already as a JSON literal, or NULL), exactly as the worker's decoder spells it (used where sms_message.raw_kept is NULL). Inlined by the planner into the sms_history view (NULL when one of the first four arguments is NULL).$c$;
COMMENT ON VIEW sms_by_device IS $c$One row per message per distinct well-formed device (a message without one appears once, with NULL device columns): the way to ask about a device. Kinds are stored lower case. Filtering on device_kind and device_id and ordering by received_at walks the device indexes of every partition (one per device position: the first, the second, the third in sms_message, the others in sms_message_device; no sort).$c$;
