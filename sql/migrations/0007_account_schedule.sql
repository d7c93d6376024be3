-- 0007: replicas share the accounts. Each account has one due time, and a replica that
-- starts a run claims the account first: it sets claimed_by and a lease, which other
-- replicas skip (FOR UPDATE SKIP LOCKED picks due, unclaimed or expired rows). When the run
-- ends the claim is cleared and due_at moves one interval (plus jitter) on. A replica that
-- dies or is cut off stops renewing its leases, so its accounts become claimable again once
-- claim_expires_at passes. The account advisory lock stays what keeps two runs of one
-- account from overlapping; this table only decides who starts which run when.
-- Every column is commented (the source of docs/schema.md). Must run on PostgreSQL 15 as well as newer servers.

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

COMMENT ON TABLE sync_schedule IS $c$One row per account a daemon replica is configured for: when its next run is due and which replica holds it now. Replicas claim due rows (FOR UPDATE SKIP LOCKED, earliest due first, only as many as they have free slots), renew the claims of their running accounts every third of the lease, and release each claim when the run ends, setting the next due time. A claim whose holder stopped renewing (it died or lost the database) is claimable again once claim_expires_at passed. sync-worker once does not use this table; the account advisory lock, not this table, keeps two runs of one account apart.$c$;
COMMENT ON COLUMN sync_schedule.account_name IS $c$Primary key.$c$;
COMMENT ON COLUMN sync_schedule.due_at IS $c$When the next run may start: the previous claim's start + the interval + a random share of the jitter; now for a new account or after a run was interrupted by a shutdown.$c$;
COMMENT ON COLUMN sync_schedule.claimed_by IS $c$The replica running it now (host:pid:random); NULL when nobody holds it.$c$;
COMMENT ON COLUMN sync_schedule.claimed_at IS $c$When the current claim was taken.$c$;
COMMENT ON COLUMN sync_schedule.claim_expires_at IS $c$The claim's lease: renewed while the run goes on; after it passes, another replica may take the account. NULL exactly when claimed_by is.$c$;
COMMENT ON COLUMN sync_schedule.last_claimed_by IS $c$The replica that claimed it last (kept after the release).$c$;
COMMENT ON COLUMN sync_schedule.last_finished_at IS $c$When that replica released it (the run ended).$c$;
