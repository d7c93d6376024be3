-- 0009: one login-guard row per ThingSpace user, whatever base URL spelling reached the platform.
-- The vendor counts failed logins per user. 0003 keyed the count by base URL as written and
-- username, so http://127.0.0.1:P/api, http://localhost:P/api and http://LOCALHOST:P/api (in
-- production https://thingspace.verizon.com/api, https://ThingSpace.verizon.com/api, ...:443/api
-- or a trailing slash) kept three counts for one user, each stopping at 4 while the vendor
-- added them up and locked the user. Now the row is the user alone, case-folded: two spellings
-- of one name count as one user, which is the safe side if the vendor tells them apart.
--
-- Merging the rows of one user (lower(username): the guard folds with Python's str.casefold,
-- which agrees for ASCII; for a name where they differ the guard adopts this row on first read):
-- * consecutive_failures: the SUM of the rows' counts, never less than any of them. Each row
--   counted the failures made through its spelling since its own last success, so the vendor's
--   count (the failures since the user's last success through any spelling) is at most the
--   sum; the highest single count could be below it. A sum at or above the ceiling leaves the
--   user tripped until `auth reset`, the safe side.
-- * failed_fingerprints: the union, plus the fingerprint of every login in flight whose lease
--   is not kept (it stays counted, its outcome will never be recorded in this row).
-- * the login in flight: the one whose lease runs longest stays the row's reservation (already
--   counted); a process still running the old code cannot report on it (its statements name a
--   column that is gone), so its lease runs out and it counts as failed, as for a killed process.
-- * last_*_at: the latest; last_outcome and last_error: those of the row used last;
--   tripped_at: the earliest.
-- Must run on PostgreSQL 15 as well as newer servers.

ALTER TABLE login_guard RENAME TO login_guard_0003;

CREATE TABLE login_guard (
    username             text        PRIMARY KEY,
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
    pending_holder       text
);

WITH old AS (
    SELECT lower(username) AS user_key, * FROM login_guard_0003
),
kept_lease AS (
    SELECT DISTINCT ON (user_key) user_key, pending_attempt, pending_fingerprint, pending_until, pending_holder
    FROM old
    WHERE pending_attempt IS NOT NULL
    ORDER BY user_key, pending_until DESC NULLS LAST, pending_attempt
),
last_used AS (
    SELECT DISTINCT ON (user_key) user_key, last_outcome, last_error
    FROM old
    ORDER BY user_key,
             GREATEST(last_attempt_at, last_success_at, last_failure_at) DESC NULLS LAST,
             consecutive_failures DESC
),
fingerprints AS (
    SELECT o.user_key, array_agg(DISTINCT f.fingerprint ORDER BY f.fingerprint) AS failed
    FROM old o
    LEFT JOIN kept_lease k USING (user_key)
    CROSS JOIN LATERAL unnest(
        o.failed_fingerprints
        || CASE WHEN o.pending_attempt IS NOT NULL
                     AND o.pending_attempt IS DISTINCT FROM k.pending_attempt
                     AND o.pending_fingerprint IS NOT NULL
                THEN ARRAY[o.pending_fingerprint] ELSE '{}'::text[] END
    ) AS f(fingerprint)
    GROUP BY o.user_key
),
merged AS (
    SELECT user_key,
           sum(consecutive_failures)::integer AS failures,
           max(last_attempt_at) AS last_attempt_at,
           max(last_success_at) AS last_success_at,
           max(last_failure_at) AS last_failure_at,
           min(tripped_at) AS tripped_at
    FROM old
    GROUP BY user_key
)
INSERT INTO login_guard (username, consecutive_failures, failed_fingerprints, last_outcome,
                         last_attempt_at, last_success_at, last_failure_at, last_error, tripped_at,
                         pending_attempt, pending_fingerprint, pending_until, pending_holder)
SELECT m.user_key, m.failures, COALESCE(f.failed, '{}'), u.last_outcome,
       m.last_attempt_at, m.last_success_at, m.last_failure_at, u.last_error, m.tripped_at,
       k.pending_attempt, k.pending_fingerprint, k.pending_until, k.pending_holder
FROM merged m
JOIN last_used u USING (user_key)
LEFT JOIN kept_lease k USING (user_key)
LEFT JOIN fingerprints f USING (user_key);

DROP TABLE login_guard_0003;

COMMENT ON TABLE login_guard IS $c$The login guard's record of one ThingSpace user, whatever base URL reached the platform: the presumed vendor count of failed logins (refusals, unknown outcomes, a login in flight) since the last success seen by any process. ThingSpace locks a user after five; the guard never lets it pass four.$c$;
COMMENT ON COLUMN login_guard.username IS $c$The ThingSpace user, case-folded (primary key): spellings that differ only in case are one user, the safe side. No base URL: the vendor counts per user.$c$;
COMMENT ON COLUMN login_guard.consecutive_failures IS $c$Failed logins in a row presumed at the vendor: refused, outcome unknown, or in flight. The guard never makes a fifth; a count merged by 0009 may exceed 4 (the user stays tripped until auth reset).$c$;
COMMENT ON COLUMN login_guard.failed_fingerprints IS $c$Salted slow hashes of the credentials that failed since the last success (never the credentials).$c$;
COMMENT ON COLUMN login_guard.last_outcome IS $c$succeeded, refused, unknown (no readable answer), throttled (429/408, not counted) or reset (auth reset).$c$;
COMMENT ON COLUMN login_guard.last_attempt_at IS $c$When the last login was started.$c$;
COMMENT ON COLUMN login_guard.last_success_at IS $c$When a login last succeeded.$c$;
COMMENT ON COLUMN login_guard.last_failure_at IS $c$When the last failure was recorded.$c$;
COMMENT ON COLUMN login_guard.last_error IS $c$What the last failure or throttle was (error class and message; credentials are never in it).$c$;
COMMENT ON COLUMN login_guard.tripped_at IS $c$When the guard first refused to attempt a login since the last success or reset.$c$;
COMMENT ON COLUMN login_guard.pending_attempt IS $c$The login in flight, already counted as failed until it reports; NULL when none.$c$;
COMMENT ON COLUMN login_guard.pending_fingerprint IS $c$The fingerprint of the credentials that login uses.$c$;
COMMENT ON COLUMN login_guard.pending_until IS $c$When that login's lease runs out: after it, the login counts as failed with an unknown outcome and others may log in.$c$;
COMMENT ON COLUMN login_guard.pending_holder IS $c$host:pid of the process making that login.$c$;
