-- Named queries of sync_worker.migrations.

-- name: lock
SELECT pg_advisory_lock(%(namespace)s, %(key)s);

-- name: unlock
SELECT pg_advisory_unlock(%(namespace)s, %(key)s);

-- name: create_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: table_exists
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: applied
SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version;

-- name: record
INSERT INTO schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s);

-- name: create_database
-- {name}: a quoted identifier composed by the caller (CREATE DATABASE takes no parameters).
CREATE DATABASE {name};
