-- 0007: replicas share the accounts. Each account has one due time, and a replica that
-- starts a run claims the account first: it sets claimed_by and a lease, which other
-- replicas skip (FOR UPDATE SKIP LOCKED picks due, unclaimed or expired rows). When the run
-- ends the claim is cleared and due_at moves one interval (plus jitter) on. A replica that
-- dies or is cut off stops renewing its leases, so its accounts become claimable again once
-- claim_expires_at passes. The account advisory lock stays what keeps two runs of one
-- account from overlapping; this table only decides who starts which run when.
-- docs/schema.md documents it. Must run on PostgreSQL 15 as well as newer servers.

CREATE TABLE sync_schedule (
    account_name     text        PRIMARY KEY,
    due_at           timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    claimed_at       timestamptz,
    claim_expires_at timestamptz,
    last_claimed_by  text,
    last_finished_at timestamptz,
    CHECK ((claimed_by IS NULL) = (claim_expires_at IS NULL))
);

-- The claim query's scan: the earliest due rows first.
CREATE INDEX sync_schedule_due_idx ON sync_schedule (due_at);
