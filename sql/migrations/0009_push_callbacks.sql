-- 0009: every callback the receiver accepted (push mode, issue 16). One row per distinct body:
-- the body exactly as received except the password value (the platform puts the listener's
-- credentials in every body), what could be read from it, and the keys of the sms_history rows
-- it produced. A shape the receiver does not know is kept here and reported, never dropped.
-- docs/schema.md documents every column. Must run on PostgreSQL 15 as well as newer servers.

CREATE TABLE sms_callback (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_name    text        NOT NULL,
    shape           text        NOT NULL
        CONSTRAINT sms_callback_shape_check CHECK (shape IN ('envelope', 'messages', 'flat', 'unknown')),
    problem         text,
    request_id      text,
    callback_count  integer,
    messages        integer     NOT NULL,
    inserted        integer     NOT NULL,
    message_keys    text[]      NOT NULL DEFAULT '{}',
    body            bytea       NOT NULL,
    body_size       bigint      NOT NULL,
    body_sha256     text        NOT NULL,
    body_exact      boolean     NOT NULL,
    source_address  text,
    received_at     timestamptz NOT NULL,
    first_stored_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    seen_count      integer     NOT NULL DEFAULT 1,
    -- A callback delivered again byte for byte is the same row.
    CONSTRAINT sms_callback_body UNIQUE (account_name, body_sha256)
);
CREATE INDEX sms_callback_unknown_idx ON sms_callback (account_name, first_stored_at DESC)
    WHERE shape = 'unknown';
