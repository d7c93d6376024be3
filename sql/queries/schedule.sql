-- Named queries of sync_worker.claims: which replica starts which account run, and when.

-- name: schedule_register
-- Accounts a replica is configured for become due now, unless another replica registered them.
INSERT INTO sync_schedule (account_name, due_at)
SELECT a, now() FROM unnest(%(accounts)s::text[]) AS a
ON CONFLICT (account_name) DO NOTHING;

-- name: schedule_claim
-- The earliest due accounts of this replica's configuration that nobody holds (or whose
-- holder's lease ran out), claimed in one statement. SKIP LOCKED: replicas claiming at the
-- same moment take different rows instead of waiting for each other.
WITH due AS (
    SELECT account_name
    FROM sync_schedule
    WHERE account_name = ANY(%(accounts)s::text[])
      AND due_at <= now()
      AND (claimed_by IS NULL OR claim_expires_at <= now())
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
-- The holder is alive: its claims of running accounts last another lease.
UPDATE sync_schedule
SET claim_expires_at = now() + make_interval(secs => %(lease)s)
WHERE claimed_by = %(holder)s AND account_name = ANY(%(accounts)s::text[]);

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
