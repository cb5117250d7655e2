-- The one requeue (reconciler/ops/requeue.py): jobs requeue, jobs retry-failed and
-- dead-letter replay. Binds as every change in sql/ops/jobs.sql, plus :run_at and
-- :keep_attempts.

-- name: requeue
-- failed, stale, dead or cancelled -> queued, due at :run_at (now, or the
-- operator's --at/--in), with a fresh retry
-- budget and no error unless :keep_attempts (then a job with no attempts left
-- dies again after one more failure, as its policy says). The budget starts
-- again by moving attempt_base up to attempt: attempt itself never goes down,
-- so the next claim is a new attempt number and no earlier claim of this job
-- can pass the fence.
WITH picked AS (
    SELECT j.id, j.status AS from_status, j.attempt
    FROM jobs j
    WHERE j.status = ANY (CAST(:eligible AS text[]))
      AND /*job_filter*/
    ORDER BY j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), moved AS (
    UPDATE jobs j
    SET status = 'queued', run_at = CAST(:run_at AS timestamptz), finished_at = NULL,
        attempt_base = CASE WHEN CAST(:keep_attempts AS boolean) THEN j.attempt_base
                            ELSE j.attempt END,
        last_error = CASE WHEN CAST(:keep_attempts AS boolean) THEN j.last_error END
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, p.from_status, p.attempt
), events AS (
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason, run_id)
    SELECT m.id, m.from_status, 'queued', CAST(:now AS timestamptz), :actor,
           jsonb_strip_nulls(jsonb_build_object(
               'command', CAST(:command AS text),
               'attempt_before', m.attempt,
               'attempts_reset', NOT CAST(:keep_attempts AS boolean),
               'run_at', CASE WHEN CAST(:run_at AS timestamptz) <> CAST(:now AS timestamptz)
                              THEN CAST(:run_at AS timestamptz) END,
               'note', CAST(:note AS text))),
           CAST(:run_id AS bigint)
    FROM moved m
)
SELECT id, from_status, 'queued' AS to_status FROM moved
