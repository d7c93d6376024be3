-- Queries of `sync-worker demo` (sync_worker/demo.py).

-- name: demo_top_devices
-- The seeded traffic is historical, so "the busiest day" stands in for "today".
SELECT account_name, device_kind, device_id, day_utc, messages
FROM sms_daily_device_counts
WHERE day_utc = (
    SELECT day_utc FROM sms_daily_account_counts GROUP BY day_utc ORDER BY sum(messages) DESC LIMIT 1
)
ORDER BY messages DESC, account_name, device_id
LIMIT 5;

