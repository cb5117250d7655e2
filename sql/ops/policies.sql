-- Retry policies (table retry_policies): read and change them.

-- name: list
SELECT priority, kind, max_attempts,
       extract(epoch FROM initial_delay)::double precision AS initial_delay_s,
       extract(epoch FROM max_delay)::double precision AS max_delay_s,
       multiplier, jitter
FROM retry_policies
ORDER BY kind NULLS FIRST, priority

-- name: set_priority
-- Only the values given change; a priority's row always exists (seeded).
UPDATE retry_policies
SET max_attempts  = coalesce(:max_attempts, max_attempts),
    initial_delay = coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)),
                             initial_delay),
    max_delay     = coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)), max_delay),
    multiplier    = coalesce(CAST(:multiplier AS double precision), multiplier),
    jitter        = coalesce(CAST(:jitter AS double precision), jitter)
WHERE priority = :priority AND kind IS NULL
RETURNING priority

-- name: set_kind
-- A kind's row starts from the default priority's values for anything not given.
INSERT INTO retry_policies AS rp (kind, max_attempts, initial_delay, max_delay, multiplier, jitter)
SELECT :kind,
       coalesce(:max_attempts, d.max_attempts),
       coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)), d.initial_delay),
       coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)), d.max_delay),
       coalesce(CAST(:multiplier AS double precision), d.multiplier),
       coalesce(CAST(:jitter AS double precision), d.jitter)
FROM retry_policies d WHERE d.priority = 2 AND d.kind IS NULL
ON CONFLICT (kind) DO UPDATE
SET max_attempts  = coalesce(:max_attempts, rp.max_attempts),
    initial_delay = coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)),
                             rp.initial_delay),
    max_delay     = coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)),
                             rp.max_delay),
    multiplier    = coalesce(CAST(:multiplier AS double precision), rp.multiplier),
    jitter        = coalesce(CAST(:jitter AS double precision), rp.jitter)
RETURNING kind

-- name: delete_kind
DELETE FROM retry_policies WHERE kind = :kind RETURNING kind

-- name: recompute_retry_times
-- After a policy change (`policies set` / `delete`): the retry time of the
-- next :batch_size waiting jobs (failed or stale with attempts left) after
-- (:after_at, :after_id) in finish order, walking jobs_requeue_idx, from the
-- policies as they are now (retry_time(), the rule of the trigger
-- jobs_retry_at). Only rows whose time changes are written, and only if they
-- are still the same wait (a job requeued or failed again meanwhile got its
-- time from the trigger). Returns the batch's size, how many changed, and its
-- last position for the next batch.
WITH batch AS (
    SELECT j.id, j.finished_at, j.attempt, j.attempt_base,
           retry_time(j.kind, j.priority, j.attempt - j.attempt_base, j.id,
                      coalesce(j.finished_at, j.updated_at)) AS retry_at
    FROM jobs j
    WHERE j.status IN ('failed', 'stale')
      AND j.attempt - j.attempt_base < j.max_attempts
      AND (j.finished_at, j.id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS bigint))
    ORDER BY j.finished_at, j.id
    LIMIT :batch_size
), changed AS (
    UPDATE jobs j SET retry_at = b.retry_at
    FROM batch b
    WHERE j.id = b.id AND j.retry_at IS DISTINCT FROM b.retry_at
      AND j.status IN ('failed', 'stale')
      AND j.finished_at = b.finished_at AND j.attempt = b.attempt
      AND j.attempt_base = b.attempt_base
    RETURNING j.id
), last AS (
    SELECT b.finished_at, b.id FROM batch b ORDER BY b.finished_at DESC, b.id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch) AS seen, (SELECT count(*) FROM changed) AS changed,
       (SELECT l.finished_at FROM last l) AS last_at, (SELECT l.id FROM last l) AS last_id

-- name: recompute_retry_times_unfinished
-- The same for waiting jobs without a finish time (only rows written by hand
-- have none): not in finish order, so apart, and few.
UPDATE jobs j
SET retry_at = retry_time(j.kind, j.priority, j.attempt - j.attempt_base, j.id, j.updated_at)
WHERE j.status IN ('failed', 'stale')
  AND j.attempt - j.attempt_base < j.max_attempts
  AND j.finished_at IS NULL
  AND j.retry_at IS DISTINCT FROM
      retry_time(j.kind, j.priority, j.attempt - j.attempt_base, j.id, j.updated_at)
RETURNING j.id
