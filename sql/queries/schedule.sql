-- Named queries of sync_worker.claims: which replica starts which account run, and when.

-- name: schedule_register
-- A replica's heartbeat (at its start and every third of its lease), in one statement whatever
-- the number of accounts: the accounts it is configured for exist in the schedule (a missing
-- row, new or deleted by `accounts forget`, is due now; an existing one keeps its due time and
-- claim: DO NOTHING locks and writes nothing), and the replica is recorded as serving them for
-- one more lease (one sync_replica row). Rows of other replicas whose lease passed go. Inserted
-- in name order: replicas inserting the same missing names wait for each other in one order
-- instead of deadlocking. Returns how many schedule rows it had to create.
WITH registered AS (
    INSERT INTO sync_schedule (account_name, due_at)
    SELECT a, now() FROM unnest(%(accounts)s::text[]) AS a ORDER BY a
    ON CONFLICT (account_name) DO NOTHING
    RETURNING 1
), serving AS (
    INSERT INTO sync_replica AS r (holder, accounts, seen_at, serves_until)
    VALUES (%(holder)s, %(accounts)s::text[], now(), now() + make_interval(secs => %(lease)s))
    ON CONFLICT (holder) DO UPDATE
        SET accounts = EXCLUDED.accounts, seen_at = EXCLUDED.seen_at, serves_until = EXCLUDED.serves_until
    RETURNING 1
), expired AS (
    DELETE FROM sync_replica WHERE serves_until < now() AND holder <> %(holder)s RETURNING 1
)
SELECT (SELECT count(*) FROM registered) AS registered;

-- name: schedule_claim
-- The earliest due accounts of this replica's configuration that nobody holds (or whose
-- holder's lease ran out), claimed in one statement. SKIP LOCKED: replicas claiming at the
-- same moment take different rows instead of waiting for each other. A claim this very holder
-- still has on an account it is not running (%(running)s: its release failed, the database was
-- away when the run ended) is stale by the holder's own knowledge: it is taken back at once
-- instead of waiting out its own lease.
WITH due AS (
    SELECT account_name
    FROM sync_schedule
    WHERE account_name = ANY(%(accounts)s::text[])
      AND due_at <= now()
      AND (
          claimed_by IS NULL
          OR claim_expires_at <= now()
          OR (claimed_by = %(holder)s AND NOT account_name = ANY(%(running)s::text[]))
      )
    ORDER BY due_at, account_name
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE sync_schedule s
SET claimed_by = %(holder)s,
    claimed_at = now(),
    claim_expires_at = now() + make_interval(secs => %(lease)s),
    last_claimed_by = %(holder)s
FROM due
WHERE s.account_name = due.account_name
RETURNING s.account_name, EXTRACT(EPOCH FROM (now() - s.due_at))::double precision AS late_seconds;

-- name: schedule_renew
-- The holder is alive: its claims of running accounts last another lease. Only rows it still
-- holds: a claim that expired and was taken over belongs to the new holder, and extending it
-- would delay the takeover after the new holder dies. Returns the accounts renewed.
UPDATE sync_schedule
SET claim_expires_at = now() + make_interval(secs => %(lease)s)
WHERE claimed_by = %(holder)s AND account_name = ANY(%(accounts)s::text[])
RETURNING account_name;

-- name: schedule_release
-- The run ended: the next one is due %(delay)s seconds after this claim began (after now
-- with from_now). Only the holder's own claim: one that expired and was taken over stays.
UPDATE sync_schedule
SET claimed_by = NULL,
    claimed_at = NULL,
    claim_expires_at = NULL,
    last_finished_at = now(),
    due_at = CASE WHEN %(from_now)s THEN now() ELSE claimed_at END + make_interval(secs => %(delay)s)
WHERE account_name = %(account_name)s AND claimed_by = %(holder)s;

-- name: schedule_release_all
-- A stopping replica hands back every claim it still holds, due at once for the others.
UPDATE sync_schedule
SET claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL, due_at = least(due_at, now())
WHERE claimed_by = %(holder)s;

-- name: schedule_rows
SELECT account_name, due_at, claimed_by, claim_expires_at, last_claimed_by, last_finished_at
FROM sync_schedule
ORDER BY account_name;

-- name: schedule_served
-- The replicas that serve an account: they listed it at a heartbeat whose lease has not passed.
SELECT holder, serves_until
FROM sync_replica
WHERE %(account_name)s = ANY(accounts) AND serves_until > now()
ORDER BY serves_until DESC, holder;
