-- dead-letter: failed or stale jobs with no attempts left become dead.
--
-- Binds: :now, :batch_size, :actor, :run_id.
--
-- attempts used (attempt - attempt_base) >= max_attempts is the exact
-- complement of requeue's condition, so every failed or stale job has exactly
-- one way out.
-- finished_at becomes the time of death, which the dead retention counts from.

-- name: apply
WITH candidates AS (
    SELECT j.id, j.status AS from_status, j.attempt, j.attempt - j.attempt_base AS used,
           j.max_attempts
    FROM jobs j
    WHERE j.status IN ('failed', 'stale')
      AND j.attempt - j.attempt_base >= j.max_attempts
    ORDER BY j.finished_at, j.id
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), moved AS (
    UPDATE jobs j
    SET status = 'dead', finished_at = CAST(:now AS timestamptz)
    FROM candidates c
    WHERE j.id = c.id
    RETURNING j.id, c.from_status, c.attempt, c.used, c.max_attempts, j.last_error,
              j.queue, j.kind, j.tenant_id
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, m.from_status, 'dead', CAST(:now AS timestamptz), :actor,
           jsonb_build_object('attempt', m.attempt, 'attempts_used', m.used,
                              'max_attempts', m.max_attempts,
                              'last_error', m.last_error),
           CAST(:run_id AS bigint)
    FROM moved m
)
-- What each dead job was, for its log line and Sentry event (reconciler/signals.py).
SELECT id, from_status, 'dead' AS to_status, queue, kind, tenant_id, attempt,
       left(coalesce(last_error->>'message', last_error::text), 500) AS error
FROM moved
