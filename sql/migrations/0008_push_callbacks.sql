-- 0008: every callback the receiver accepted (push mode, issue 16). One row per distinct body:
-- the body exactly as received except the password value (the platform puts the listener's
-- credentials in every body), what could be read from it, and the keys of the sms_history rows
-- it produced. A shape the receiver does not know is kept here and reported, never dropped.
-- Every column is commented (the source of docs/schema.md). Must run on PostgreSQL 15 as well as newer servers.

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

COMMENT ON TABLE sms_callback IS $c$Every callback the receiver (sync-worker receive, push mode) accepted, one row per distinct body, written in the same transaction as the history rows it produced, before the receiver answers 2xx. Refused requests are never stored. A body of a shape the receiver does not know is kept with shape unknown and reported: its messages are not in the history until a receiver that reads the shape exists.$c$;
COMMENT ON COLUMN sms_callback.id IS $c$Primary key (identity).$c$;
COMMENT ON COLUMN sms_callback.account_name IS $c$The account of the listener URL (/callbacks/ACCOUNT), one the receiver serves.$c$;
COMMENT ON COLUMN sms_callback.shape IS $c$How the body was read: envelope (a history message under a ...Response key), messages (a messages list), flat (text and deviceIds at the top level) or unknown.$c$;
COMMENT ON COLUMN sms_callback.problem IS $c$For unknown: which top-level keys it had (names only). NULL otherwise.$c$;
COMMENT ON COLUMN sms_callback.request_id IS $c$The envelope's requestId, when present.$c$;
COMMENT ON COLUMN sms_callback.callback_count IS $c$The envelope's callbackCount (the platform's delivery attempt), when present.$c$;
COMMENT ON COLUMN sms_callback.messages IS $c$Messages read from the body.$c$;
COMMENT ON COLUMN sms_callback.inserted IS $c$Of those, rows new to the history when the body was first accepted (the rest were stored already: pushed before or polled).$c$;
COMMENT ON COLUMN sms_callback.message_keys IS $c$The sms_history.message_key of each message read, linking the rows.$c$;
COMMENT ON COLUMN sms_callback.body IS $c$The body as received except the value of every password member, replaced by ********** (the platform puts the listener password in every body).$c$;
COMMENT ON COLUMN sms_callback.body_size IS $c$Length of body in bytes.$c$;
COMMENT ON COLUMN sms_callback.body_sha256 IS $c$sha256 hex of body (the redacted bytes).$c$;
COMMENT ON COLUMN sms_callback.body_exact IS $c$True: body is byte for byte what arrived except the password value. False: the password member was spelled with escapes, so the body was re-serialised as JSON to get it out.$c$;
COMMENT ON COLUMN sms_callback.source_address IS $c$The caller's address (from X-Forwarded-For only when the peer is a trusted proxy).$c$;
COMMENT ON COLUMN sms_callback.received_at IS $c$When the receiver read the body (the first time).$c$;
COMMENT ON COLUMN sms_callback.first_stored_at IS $c$When the row was written.$c$;
COMMENT ON COLUMN sms_callback.last_seen_at IS $c$When the same body was last accepted again (a redelivery).$c$;
COMMENT ON COLUMN sms_callback.seen_count IS $c$How many times the same body was accepted.$c$;
