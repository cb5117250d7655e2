-- purge: delete jobs that finished longer ago than their status's retention,
-- with their events, and the reconciler's own old run records.
--
-- Binds: :status (one terminal status per pass), :horizon (the run's now minus
-- that status's retention), :batch_size; for runs: :runs_horizon.
--
-- The job rows and their job_events rows go in one statement, so no event is
-- ever left pointing at a deleted job, nor a job without its history.

-- name: apply
WITH doomed AS (
    SELECT j.id
    FROM jobs j
    WHERE j.status = CAST(:status AS text)
      AND j.finished_at < CAST(:horizon AS timestamptz)
    ORDER BY j.finished_at, j.id
    LIMIT :batch_size
    FOR UPDATE OF j SKIP LOCKED
), gone AS (
    DELETE FROM jobs j
    USING doomed d
    WHERE j.id = d.id
    RETURNING j.id, j.status
), events AS (
    DELETE FROM job_events e
    USING gone g
    WHERE e.job_id = g.id
)
SELECT id, status AS from_status, 'purged' AS to_status FROM gone

-- name: runs
WITH doomed AS (
    SELECT r.id
    FROM runs r
    WHERE r.started_at < CAST(:runs_horizon AS timestamptz)
      AND r.status <> 'running'
    ORDER BY r.started_at
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
)
DELETE FROM runs r USING doomed d WHERE r.id = d.id
RETURNING r.id
