-- 0010: retention never removes a message stored less than the window ago, whatever its timestamp
-- (issue 21: messages stamped 1970, 2016 or last year were dropped minutes after they were stored).
-- Must run on PostgreSQL 15 as well as newer servers.
--
-- Retention now asks every partition it would drop "was any row stored since the cutoff?", and asks it
-- again under the lock that keeps writers out until the drop commits. That second question must cost an
-- index probe, not a scan of a month of history while every reader and writer of the history waits. The
-- b-tree on first_stored_at answers it, and finds the old rows of the partitions retention empties in
-- batches (the undated one, and a partition a broken device clock keeps feeding). Rows of one block share
-- first_stored_at (the transaction's start), so deduplication keeps it to a few bytes per message; inserts
-- append at its right edge. Building it reads every partition once: on a large history, run
-- `sync-worker migrate` while the workers are stopped (writers wait for the build).
CREATE INDEX sms_message_stored_idx ON sms_message (first_stored_at);
CREATE INDEX sms_message_device_stored_idx ON sms_message_device (first_stored_at);

COMMENT ON TABLE sms_message IS $c$One row per message ever received, for every account: the storage behind the sms_history view. Partitioned by UTC month of received_at (sms_history_ensure_partition); messages without a usable timestamp live in sms_message_undated. Rows are never updated. Retention (sync-worker retention) removes a row only when both its received_at and its first_stored_at are older than the window: it drops a partition whose range ended before the cutoff when none of its rows was stored since, and deletes old rows in batches where recent ones must stay.$c$;
COMMENT ON COLUMN sms_message.first_stored_at IS $c$When the worker first stored the row (a replay never changes it). Retention never removes a row stored less than the window ago.$c$;
COMMENT ON TABLE sms_message_undated IS $c$Partition of sms_message for messages without a usable timestamp (received_at NULL), the DEFAULT partition. Retention deletes its rows stored before the cutoff (first_stored_at), in batches; it is never dropped.$c$;
