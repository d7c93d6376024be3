-- 0005: "the last N messages of a device" through sms_by_device is index-backed.
-- The view exposed the parent's received_at, so ORDER BY received_at could not use
-- sms_history_device_lookup_idx (device_kind, device_id, received_at DESC) and the planner
-- scanned and joined both tables (147 ms on 300k rows against 0.14 ms). The device row
-- carries the same timestamp (written in the same statement), so the view now exposes it.
-- Same columns, same types, same order: CREATE OR REPLACE keeps every dependent query valid.

CREATE OR REPLACE VIEW sms_by_device AS
SELECT h.id AS history_id,
       h.account_name,
       d.position,
       d.device_kind,
       d.device_id,
       h.message,
       d.received_at,
       h.timestamp_raw,
       h.problems,
       h.first_stored_at
FROM sms_history h
JOIN sms_history_device d ON d.history_id = h.id;
