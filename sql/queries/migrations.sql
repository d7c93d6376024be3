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

-- name: word_search_available
-- Whether this server can create pg_trgm (the contrib module is installed).
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm');

-- name: enable_word_search
-- The opt-in word search (docs/schema.md "Finding messages by a word"): a trigram GIN index on the
-- message text, on the partitioned table, so every partition has it, those created later too.
-- pg_trgm is a trusted extension: the database owner may create it without being a superuser.
-- CREATE INDEX on a partitioned table cannot be CONCURRENTLY: writers wait while it builds.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS sms_message_text_trgm_idx ON sms_message USING gin (message gin_trgm_ops);
COMMENT ON INDEX sms_message_text_trgm_idx IS 'Opt-in word search (sync-worker migrate --word-search): trigram GIN index on message, used by LIKE/ILIKE ''%word%'' and regular expressions.';

-- name: word_search_enabled
SELECT to_regclass('sms_message_text_trgm_idx') IS NOT NULL;
