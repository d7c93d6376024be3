-- 0011: which daemon replica serves which accounts, and until when (issue 21). Every replica
-- records itself and its configured accounts here at start and at every heartbeat (a third of
-- its claim lease), in the statement that also puts any missing account back into
-- sync_schedule. `accounts forget` refuses an account a replica served within its lease, whatever
-- the configuration of the shell it runs in. One row per replica, not per account: a heartbeat
-- writes one row whatever the number of accounts.
-- Every column is commented (the source of docs/schema.md). Must run on PostgreSQL 15 as well as newer servers.

CREATE TABLE sync_replica (
    holder       text        PRIMARY KEY,
    accounts     text[]      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    serves_until timestamptz NOT NULL
);

COMMENT ON TABLE sync_replica IS $c$One row per running daemon replica (sync-worker run): the accounts it is configured for and until when it counts as serving them. Written at its start and at every heartbeat (every third of SYNC_CLAIM_LEASE_SECONDS), which also registers those accounts in sync_schedule again if a row is missing. accounts forget refuses an account listed by a row whose serves_until has not passed (unless --even-if-configured). Rows whose serves_until passed are deleted by the next heartbeat of any replica.$c$;
COMMENT ON COLUMN sync_replica.holder IS $c$The replica (host:pid:random), as in sync_schedule.claimed_by. Primary key.$c$;
COMMENT ON COLUMN sync_replica.accounts IS $c$The accounts its configuration names (SYNC_ACCOUNTS / --config).$c$;
COMMENT ON COLUMN sync_replica.started_at IS $c$Its first heartbeat (the replica's start).$c$;
COMMENT ON COLUMN sync_replica.seen_at IS $c$Its last heartbeat.$c$;
COMMENT ON COLUMN sync_replica.serves_until IS $c$The last heartbeat + the replica's lease (SYNC_CLAIM_LEASE_SECONDS): until then its accounts count as served, also after it stopped.$c$;
