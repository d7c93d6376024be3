-- The analyst queries docs/schema.md documents, runnable as they are: the values name the busy device
-- and the account of `sync-worker simulate`'s and the demo's traffic (and of the test dataset), and the
-- time ranges end now, so each query answers on that data. tests/integration/test_analyst_queries.py runs every block
-- with EXPLAIN ANALYZE on a skewed dataset and fails on a sequential scan of a history table or a
-- large sort; docs/schema.md shows each block with the plan that test saw.

-- name: last_messages_of_a_device
-- The last 50 messages of one device (also for messages that name several devices); undated ones (received_at NULL) are left out, they would sort first.
SELECT received_at, account_name, message
FROM sms_by_device
WHERE device_kind = 'imei' AND device_id = '990000862471854' AND received_at IS NOT NULL
ORDER BY received_at DESC
LIMIT 50;

-- name: device_over_a_time_range
-- One device's messages over a time range (the last day), oldest first.
SELECT received_at, account_name, message
FROM sms_by_device
WHERE device_kind = 'imei' AND device_id = '990000862471854'
  AND received_at >= now() - interval '1 day' AND received_at < now()
ORDER BY received_at;

-- name: account_over_a_time_range
-- One account's messages over a time range (the last day), oldest first.
SELECT received_at, device_kind, device_id, message
FROM sms_history
WHERE account_name = '0252012345-00001'
  AND received_at >= now() - interval '1 day' AND received_at < now()
ORDER BY received_at;

-- name: account_daily_counts
-- Messages (and malformed ones) of one account per UTC day, the last 30 days.
SELECT day_utc, messages, malformed
FROM sms_account_daily_counts('0252012345-00001', current_date - 30, current_date)
ORDER BY day_utc;

-- name: device_daily_counts
-- Messages of one device per UTC day, the last 30 days.
SELECT day_utc, messages
FROM sms_device_daily_counts('imei', '990000862471854', current_date - 30, current_date)
ORDER BY day_utc;

-- name: malformed_of_an_account
-- One account's malformed messages of the last week, with what was wrong and the exact original.
SELECT received_at, problems, raw_json
FROM sms_history
WHERE account_name = '0252012345-00001'
  AND received_at >= now() - interval '7 days' AND received_at < now()
  AND cardinality(problems) > 0
ORDER BY received_at;

-- name: unknown_field_of_an_account
-- A field the model does not know about, from the jsonb form of the original, over one account's last day.
SELECT raw ->> 'someNewField' AS some_new_field, count(*)
FROM sms_history
WHERE account_name = '0252012345-00001'
  AND received_at >= now() - interval '1 day' AND received_at < now()
GROUP BY 1;

-- name: silent_devices
-- Devices that went silent: a message in the last 30 days but none in the last 6 hours, with when each was last heard, for which account and what it said (one row per device, in device order).
SELECT device_kind, device_id, last_received_at, now() - last_received_at AS silent_for, account_name, message
FROM sms_device_last_seen(now() - interval '30 days')
WHERE last_received_at < now() - interval '6 hours';

-- name: messages_containing_a_word
-- The newest 50 messages of the last 30 days containing a word (in any letter case), over every account. Index-backed only with the opt-in word-search index (`sync-worker migrate --word-search`, see "Finding messages by a word"); without it this reads every row of the window.
SELECT received_at, account_name, device_kind, device_id, message
FROM sms_history
WHERE message ILIKE '%watchdog%'
  AND received_at >= now() - interval '30 days' AND received_at < now()
ORDER BY received_at DESC
LIMIT 50;
