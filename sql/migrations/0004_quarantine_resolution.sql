-- 0004: reversible quarantine and the per-account failure streak. docs/schema.md documents
-- every column. Must run on PostgreSQL 15 as well as newer servers.

-- `sync-worker quarantine replay` re-reads a kept block with the current code; a block whose
-- every message it stored is resolved. Rows are never deleted: the bytes stay the evidence.
ALTER TABLE sms_quarantine
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN replayed_at     timestamptz,
    ADD COLUMN replay_messages integer,
    ADD COLUMN replay_inserted integer,
    ADD COLUMN replay_problem  text;
CREATE INDEX sms_quarantine_unresolved_idx ON sms_quarantine (account_name) WHERE resolved_at IS NULL;

-- A readable block that fails to be stored with the same permanent error run after run would
-- stop its account forever; after a few consecutive runs it is quarantined instead.
CREATE TABLE sync_block_failure (
    account_name   text        PRIMARY KEY,
    request_token  text,
    body_sha256    text        NOT NULL,
    error_kind     text        NOT NULL,
    error          text        NOT NULL,
    streak         integer     NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now()
);
