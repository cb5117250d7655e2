-- requeue: failed or stale jobs with attempts left go back to queued once
-- their backoff has elapsed, due at once (run_at = the run's now).
--
-- Binds: :now, :batch_size, :actor, :run_id.
--
-- Backoff comes from the job's retry policy (its kind's row in retry_policies,
-- else its priority's; see backoff() and retry_time() in sql/schema.sql), by
-- the attempts used of the job's current budget (attempt - attempt_base),
-- counted from when the attempt ended (finished_at). It is decided when the
-- job enters failed or stale and kept in retry_at (trigger jobs_retry_at), so
-- this selection walks jobs_retry_due_idx up to :now and stops at its LIMIT:
-- a batch reads the jobs due, never the backlog still in backoff. Due jobs
-- leave earliest first. A job with no policy at all is requeued at once rather
-- than left behind. attempts used < max_attempts is what separates this task
-- from dead-letter: no job can be eligible for both.

-- name: apply
WITH candidates AS (
    SELECT j.id, j.status AS from_status, j.attempt,
           j.retry_at - coalesce(j.finished_at, j.updated_at) AS delay
    FROM jobs j
    WHERE j.status IN ('failed', 'stale')
      AND j.attempt - j.attempt_base < j.max_attempts
      AND j.retry_at <= CAST(:now AS timestamptz)
    ORDER BY j.retry_at, j.id
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), moved AS (
    UPDATE jobs j
    SET status = 'queued', run_at = CAST(:now AS timestamptz), finished_at = NULL
    FROM candidates c
    WHERE j.id = c.id
    RETURNING j.id, c.from_status, c.attempt, c.delay
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, m.from_status, 'queued', CAST(:now AS timestamptz), :actor,
           jsonb_build_object('attempt', m.attempt,
                              'backoff_s', round(extract(epoch FROM m.delay)::numeric, 3)),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, 'queued' AS to_status FROM moved
