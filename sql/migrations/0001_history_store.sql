-- 0001: the history store. Names here are a contract (docs/schema.md documents every one).
-- Must run on PostgreSQL 15 as well as newer servers.

CREATE TABLE sync_run (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_name      text        NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    blocks            integer     NOT NULL DEFAULT 0,
    messages_received bigint      NOT NULL DEFAULT 0,
    rows_inserted     bigint      NOT NULL DEFAULT 0,
    replays           bigint      NOT NULL DEFAULT 0,
    malformed         bigint      NOT NULL DEFAULT 0,
    outcome           text        NOT NULL DEFAULT 'running',
    error             text,
    worker_host       text        NOT NULL,
    worker_pid        integer     NOT NULL
);
-- "last run of this account" for status and dashboards.
CREATE INDEX sync_run_account_started_idx ON sync_run (account_name, started_at DESC);

CREATE TABLE sms_history (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_name    text        NOT NULL,
    message_key     text        NOT NULL,
    occurrence      integer     NOT NULL,
    device_ids      jsonb,
    device_kind     text,
    device_id       text,
    device_count    integer     NOT NULL,
    message         text,
    received_at     timestamptz,
    timestamp_raw   text,
    raw_json        text        NOT NULL,
    raw             jsonb,
    problems        text[]      NOT NULL DEFAULT '{}',
    first_stored_at timestamptz NOT NULL DEFAULT now(),
    run_id          bigint      REFERENCES sync_run (id) ON DELETE SET NULL,
    CONSTRAINT sms_history_account_message_key UNIQUE (account_name, message_key)
);
-- Analysts page through an account's messages by time.
CREATE INDEX sms_history_account_received_idx ON sms_history (account_name, received_at DESC);

-- One row per (message, device) so per-device lookups are index-backed also for
-- messages that name several devices; see docs/schema.md for the measurement.
CREATE TABLE sms_history_device (
    history_id   bigint      NOT NULL REFERENCES sms_history (id) ON DELETE CASCADE,
    position     integer     NOT NULL,
    account_name text        NOT NULL,
    device_kind  text        NOT NULL,
    device_id    text        NOT NULL,
    received_at  timestamptz,
    PRIMARY KEY (history_id, position)
);
CREATE INDEX sms_history_device_lookup_idx
    ON sms_history_device (device_kind, device_id, received_at DESC);

CREATE TABLE sync_cursor (
    account_name    text PRIMARY KEY,
    next_token      text,
    moved_at        timestamptz,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    cleared_at      timestamptz,
    cleared_reason  text
);

CREATE TABLE login_guard (
    principal            text PRIMARY KEY,
    fingerprint          text        NOT NULL,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    last_failure_at      timestamptz,
    last_error           text,
    tripped_at           timestamptz
);

CREATE VIEW sms_by_device AS
SELECT h.id AS history_id,
       h.account_name,
       d.position,
       d.device_kind,
       d.device_id,
       h.message,
       h.received_at,
       h.timestamp_raw,
       h.problems,
       h.first_stored_at
FROM sms_history h
JOIN sms_history_device d ON d.history_id = h.id;

CREATE VIEW sms_daily_device_counts AS
SELECT d.account_name,
       d.device_kind,
       d.device_id,
       (d.received_at AT TIME ZONE 'UTC')::date AS day_utc,
       count(*) AS messages
FROM sms_history_device d
GROUP BY 1, 2, 3, 4;

CREATE VIEW sms_daily_account_counts AS
SELECT account_name,
       (received_at AT TIME ZONE 'UTC')::date AS day_utc,
       count(*) AS messages,
       count(*) FILTER (WHERE cardinality(problems) > 0) AS malformed
FROM sms_history
GROUP BY 1, 2;
