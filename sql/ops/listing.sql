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
  -- The dashboard's extra filters and its keyset page (ids below :before_id); NULL: any.
  AND (CAST(:priorities AS smallint[]) IS NULL
       OR j.priority = ANY (CAST(:priorities AS smallint[])))
  AND (CAST(:error_text AS text) IS NULL
       OR j.last_error ->> 'message' ILIKE '%' || CAST(:error_text AS text) || '%')
  AND (CAST(:before_id AS bigint) IS NULL OR j.id < CAST(:before_id AS bigint))
  -- An error-text search reads only the ids from :floor_id up (see search_floor).
  AND (CAST(:floor_id AS bigint) IS NULL OR j.id >= CAST(:floor_id AS bigint))
ORDER BY j.id DESC
LIMIT :limit

-- name: search_floor
-- The lowest id of the :examine newest jobs below :before_id (NULL: fewer are left). ILIKE
-- on the last error cannot use an index: bounded by this id, a search reads at most
-- :examine rows (a backward walk of the primary key) however large the table.
SELECT j.id FROM jobs j
WHERE (CAST(:before_id AS bigint) IS NULL OR j.id < CAST(:before_id AS bigint))
ORDER BY j.id DESC
OFFSET :examine - 1
LIMIT 1
