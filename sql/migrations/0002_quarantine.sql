-- 0002: quarantined history blocks. A block whose body cannot be read (not JSON, wrong
-- envelope, nesting beyond the decoder) is kept here byte for byte and acknowledged, so one
-- bad block never stops an account's queue. docs/schema.md documents every column.
-- Must run on PostgreSQL 15 as well as newer servers (NULLS NOT DISTINCT needs 15).

CREATE TABLE sms_quarantine (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_name    text        NOT NULL,
    run_id          bigint      REFERENCES sync_run (id) ON DELETE SET NULL,
    http_status     integer     NOT NULL,
    request_token   text,
    next_token      text,
    problem         text        NOT NULL,
    body            bytea       NOT NULL,
    body_size       bigint      NOT NULL,
    body_sha256     text        NOT NULL,
    received_at     timestamptz NOT NULL,
    first_stored_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    seen_count      integer     NOT NULL DEFAULT 1,
    -- A replay of the same block (a crash before the acknowledging request) is the same row.
    CONSTRAINT sms_quarantine_block UNIQUE NULLS NOT DISTINCT
        (account_name, body_sha256, request_token, next_token)
);
CREATE INDEX sms_quarantine_account_stored_idx ON sms_quarantine (account_name, first_stored_at DESC);

ALTER TABLE sync_run ADD COLUMN quarantined integer NOT NULL DEFAULT 0;
