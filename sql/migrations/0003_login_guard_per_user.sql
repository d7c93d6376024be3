-- 0003: the login guard counts failed logins per ThingSpace user, as the vendor does.
-- The vendor locks a user after five failed logins in a row, whatever password or client
-- credentials each one used, and only a successful login clears its count. 0001 kept one
-- count per credential fingerprint and started over when the credentials changed. Now a
-- row is the presumed vendor count of one user of one platform (base URL + username); the
-- fingerprints of the credentials that failed since the last success decide which
-- credentials may still use the headroom below the vendor's limit. A login in flight is a
-- lease (pending_*): it already counts as a failure, so a process that dies or loses its
-- network mid-login leaves a failure behind, never a gap. docs/schema.md documents it.
-- Must run on PostgreSQL 15 as well as newer servers.

ALTER TABLE login_guard RENAME TO login_guard_0001;

CREATE TABLE login_guard (
    base_url             text        NOT NULL,
    username             text        NOT NULL,
    consecutive_failures integer     NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    failed_fingerprints  text[]      NOT NULL DEFAULT '{}',
    last_outcome         text        CHECK (last_outcome IN
                                         ('succeeded', 'refused', 'unknown', 'throttled', 'reset')),
    last_attempt_at      timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    tripped_at           timestamptz,
    pending_attempt      uuid,
    pending_fingerprint  text,
    pending_until        timestamptz,
    pending_holder       text,
    PRIMARY KEY (base_url, username)
);

-- 0001 rows name no base URL: '' marks them. The guard folds such a row into the user's
-- row the first time it reads that user, keeping the higher count, so an upgrade never
-- forgets a failure.
INSERT INTO login_guard (base_url, username, consecutive_failures, last_outcome,
                         last_failure_at, last_error, tripped_at)
SELECT '', principal, consecutive_failures, 'refused', last_failure_at, last_error, tripped_at
FROM login_guard_0001
WHERE consecutive_failures > 0;

DROP TABLE login_guard_0001;
