-- The login guard (sync_worker/guard.py): one row per ThingSpace user, keyed by the case-folded
-- username alone (%(username)s is auth.user_key(...)): the vendor counts per user, whatever base
-- URL spelling reached it.
-- consecutive_failures is the vendor's presumed count: refusals, unknown outcomes and logins
-- still in flight since the last success. guard.py decides; these statements only record.

-- name: guard_adopt_spelling
-- 0009 merged each user's rows under lower(username); the guard's key is Python's casefold,
-- which differs for some non-ASCII names (ß, and any non-ASCII letter on a C-locale database).
-- Such a row joins the user's row the first time it is read: the counts add up (as in 0009),
-- so an upgrade never forgets a failure. A no-op (one index probe) for every other name.
WITH spelled AS (
    DELETE FROM login_guard
    WHERE username = lower(%(spelling)s) AND username <> %(username)s
    RETURNING consecutive_failures,
              failed_fingerprints || CASE WHEN pending_fingerprint IS NULL THEN '{}'::text[]
                                          ELSE ARRAY[pending_fingerprint] END AS failed,
              last_outcome, last_attempt_at, last_success_at, last_failure_at, last_error, tripped_at
)
INSERT INTO login_guard AS g (username, consecutive_failures, failed_fingerprints, last_outcome,
                              last_attempt_at, last_success_at, last_failure_at, last_error, tripped_at)
SELECT %(username)s, consecutive_failures, failed, last_outcome,
       last_attempt_at, last_success_at, last_failure_at, last_error, tripped_at
FROM spelled
ON CONFLICT (username) DO UPDATE
SET consecutive_failures = g.consecutive_failures + EXCLUDED.consecutive_failures,
    failed_fingerprints = ARRAY(SELECT DISTINCT f
                                FROM unnest(g.failed_fingerprints || EXCLUDED.failed_fingerprints) AS f
                                ORDER BY f),
    last_attempt_at = GREATEST(g.last_attempt_at, EXCLUDED.last_attempt_at),
    last_success_at = GREATEST(g.last_success_at, EXCLUDED.last_success_at),
    last_failure_at = GREATEST(g.last_failure_at, EXCLUDED.last_failure_at),
    tripped_at = LEAST(g.tripped_at, EXCLUDED.tripped_at);

-- name: guard_ensure_row
INSERT INTO login_guard (username)
VALUES (%(username)s)
ON CONFLICT (username) DO NOTHING;

-- name: guard_state
-- lease_left: seconds until a pending login's lease runs out (<= 0: expired). The row is locked
-- until the transaction ends: a login's check and its reservation are one decision.
SELECT consecutive_failures,
       failed_fingerprints,
       last_outcome,
       last_attempt_at,
       last_success_at,
       last_failure_at,
       last_error,
       tripped_at,
       pending_attempt,
       pending_fingerprint,
       pending_holder,
       EXTRACT(EPOCH FROM (pending_until - now()))::float8 AS lease_left
FROM login_guard
WHERE username = %(username)s
FOR UPDATE;

-- name: guard_expire_pending
-- A lease that ran out is a login whose outcome nobody will ever report: it stays counted
-- (the reservation did that) and its credentials join the ones that failed.
UPDATE login_guard
SET failed_fingerprints = CASE WHEN pending_fingerprint = ANY (failed_fingerprints)
                               THEN failed_fingerprints
                               ELSE array_append(failed_fingerprints, pending_fingerprint) END,
    last_outcome = 'unknown',
    last_failure_at = LEAST(pending_until, now()),
    last_error = 'login outcome never reported (process stopped or lost its network): counted as failed',
    pending_attempt = NULL,
    pending_fingerprint = NULL,
    pending_until = NULL,
    pending_holder = NULL
WHERE username = %(username)s AND pending_attempt = %(attempt)s;

-- name: guard_mark_tripped
UPDATE login_guard
SET tripped_at = COALESCE(tripped_at, now())
WHERE username = %(username)s;

-- name: guard_reserve
-- Counted before the request goes out: if its answer never comes, the failure stays.
UPDATE login_guard
SET consecutive_failures = consecutive_failures + 1,
    last_attempt_at = now(),
    pending_attempt = %(attempt)s,
    pending_fingerprint = %(fingerprint)s,
    pending_until = now() + make_interval(secs => %(lease_seconds)s),
    pending_holder = %(holder)s
WHERE username = %(username)s
RETURNING consecutive_failures;

-- name: guard_succeeded
-- Zero, unless another login is in flight (this one's lease ran out and another process
-- took over): that one still counts until it reports.
UPDATE login_guard
SET consecutive_failures = CASE WHEN pending_attempt IS NOT NULL AND pending_attempt <> %(attempt)s
                                THEN 1 ELSE 0 END,
    failed_fingerprints = '{}',
    last_outcome = 'succeeded',
    last_success_at = now(),
    last_error = NULL,
    tripped_at = NULL,
    pending_fingerprint = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_fingerprint END,
    pending_until = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_until END,
    pending_holder = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_holder END,
    pending_attempt = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_attempt END
WHERE username = %(username)s;

-- name: guard_failed
-- A refusal or an unknown outcome. Counted at reservation already; counted again only when
-- the reservation is gone (its lease ran out and a success may have zeroed it): erring
-- high costs headroom, erring low could lock the user.
UPDATE login_guard
SET consecutive_failures = CASE WHEN pending_attempt IS NOT DISTINCT FROM %(attempt)s
                                THEN consecutive_failures ELSE consecutive_failures + 1 END,
    failed_fingerprints = CASE WHEN %(fingerprint)s = ANY (failed_fingerprints)
                               THEN failed_fingerprints
                               ELSE array_append(failed_fingerprints, %(fingerprint)s) END,
    last_outcome = %(outcome)s,
    last_failure_at = now(),
    last_error = %(error)s,
    pending_fingerprint = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_fingerprint END,
    pending_until = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_until END,
    pending_holder = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_holder END,
    pending_attempt = CASE WHEN pending_attempt = %(attempt)s THEN NULL ELSE pending_attempt END
WHERE username = %(username)s
RETURNING consecutive_failures;

-- name: guard_not_judged
-- 429/408: the platform did not judge the credentials, so the reservation is taken back.
UPDATE login_guard
SET consecutive_failures = GREATEST(consecutive_failures - 1, 0),
    last_outcome = 'throttled',
    last_error = %(error)s,
    pending_fingerprint = NULL,
    pending_until = NULL,
    pending_holder = NULL,
    pending_attempt = NULL
WHERE username = %(username)s AND pending_attempt = %(attempt)s;

-- name: guard_reset
-- The operator's statement that the vendor's count is zero again (a login that worked
-- elsewhere, or an unlock by vendor support). A login in flight keeps its reservation.
UPDATE login_guard
SET consecutive_failures = CASE WHEN pending_attempt IS NOT NULL AND pending_until > now() THEN 1 ELSE 0 END,
    failed_fingerprints = '{}',
    last_outcome = 'reset',
    last_error = NULL,
    tripped_at = NULL
WHERE username = %(username)s;

