-- The embedded test/demo server (sync_worker/embedded.py) runs as durably as production:
-- the write-path benchmarks and crash tests must not measure a server that skips fsync.
-- ALTER SYSTEM takes no bind parameters and no transaction block: one statement per block.

-- name: embedded_setting
SELECT current_setting(%(name)s);

-- name: embedded_fsync_on
ALTER SYSTEM SET fsync = on;

-- name: embedded_synchronous_commit_on
ALTER SYSTEM SET synchronous_commit = on;

-- name: embedded_full_page_writes_on
ALTER SYSTEM SET full_page_writes = on;

-- name: embedded_reload
SELECT pg_reload_conf();

-- name: embedded_data_directory
SELECT current_setting('data_directory');
