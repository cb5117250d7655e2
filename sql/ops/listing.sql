-- Listing jobs (reconciler/ops/listing.py): jobs list and dead-letter list.

-- name: list
-- For running jobs also how long they have run and how long their worker has
-- been silent: the runbooks' "find stuck jobs" query.
SELECT j.id, j.status, j.queue, j.kind, j.tenant_id, j.priority, j.attempt, j.max_attempts,
       j.run_at, j.created_at, j.started_at, j.finished_at, j.locked_by, j.heartbeat_at,
       CASE WHEN j.status = 'running'
            THEN CAST(:now AS timestamptz) - j.started_at END AS running_for,
       CASE WHEN j.status = 'running'
            THEN CAST(:now AS timestamptz) - /*last_seen*/ END AS silent_for,
       j.last_error ->> 'message' AS error
FROM jobs j
WHERE /*job_filter*/
ORDER BY j.id DESC
LIMIT :limit
