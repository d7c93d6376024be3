-- 0012: runs whose worker died before closing them (issue 22). store.begin_run closes every run of
-- the account still open once it holds the account's lock, with outcome 'abandoned'; this index
-- keeps that look-up (and status's lock_holder) to the few open rows instead of every run the
-- retention window keeps. Must run on PostgreSQL 15 as well as newer servers.

CREATE INDEX sync_run_open_idx ON sync_run (account_name) WHERE finished_at IS NULL;

COMMENT ON COLUMN sync_run.finished_at IS $c$End of the run; NULL while running. A run whose worker died (killed, or cut off from the database) stays NULL until the account's next run closes it (outcome abandoned).$c$;
COMMENT ON COLUMN sync_run.outcome IS $c$running until finished, then the sync's outcome (succeeded, quarantined, failed, interrupted, guard_tripped, ...), or abandoned: its worker died before closing it and the account's next run closed it.$c$;
