-- `reconciler dead-letter ...`: what is dead and why, a backup of it, and
-- clearing it. Queries with /*job_filter*/ get the filter of sql/ops/filter.sql.
--
-- A job counts as backed up by the rule of sql/backup.sql (spliced in at
-- /*backed_up*/): a durable export holds it with the updated_at it still has.

-- name: errors
SELECT coalesce(j.last_error ->> 'message', '(no error recorded)') AS error,
       j.kind, j.tenant_id,
       count(*) AS jobs,
       min(j.finished_at) AS first_dead_at,
       max(j.finished_at) AS last_dead_at,
       min(j.id) AS example_id
FROM jobs j
WHERE j.status = 'dead'
  AND /*job_filter*/
GROUP BY 1, 2, 3
ORDER BY count(*) DESC, 1, 2, 3
LIMIT :limit

-- name: export_page
-- Keyset pages in id order; each job with its whole history (every column
-- but claim_token_hash).
SELECT j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.status, j.attempt,
       j.attempt_base, j.max_attempts, j.run_at, j.locked_by, j.locked_at, j.heartbeat_at,
       j.started_at, j.finished_at, j.created_at, j.updated_at, j.last_error,
       j.idempotency_key,
       (SELECT coalesce(jsonb_agg(to_jsonb(e) - 'job_id' ORDER BY e.id), '[]'::jsonb)
        FROM job_events e WHERE e.job_id = j.id) AS events
FROM jobs j
WHERE j.status = 'dead'
  AND j.id > :after
  AND /*job_filter*/
ORDER BY j.id
LIMIT :page

-- name: record_export
-- Written only once the file and its folder are durable (or for stdout, with
-- durable false: recorded, but no backup).
INSERT INTO ops_exports (exported_at, actor, destination, filter, job_count, durable)
VALUES (CAST(:now AS timestamptz), :actor, :destination, CAST(:filter AS jsonb), :job_count,
        CAST(:durable AS boolean))
RETURNING id

-- name: record_exported_jobs
-- A job deleted since it was read is left out (it no longer needs a backup).
INSERT INTO ops_exported_jobs (export_id, job_id, job_updated_at)
SELECT CAST(:export_id AS bigint), x.job_id, x.updated_at
FROM unnest(CAST(:job_ids AS bigint[]), CAST(:updated AS timestamptz[])) AS x (job_id, updated_at)
JOIN jobs j ON j.id = x.job_id

-- name: not_backed_up
SELECT count(*) AS jobs, min(j.id) AS example_id
FROM jobs j
WHERE j.status = 'dead'
  AND /*job_filter*/
  AND NOT /*backed_up*/

-- name: purge
-- Deletes dead jobs of the filter with their events; unless :no_backup, only
-- those backed up (checked again here, row by row, under the row lock).
WITH doomed AS (
    SELECT j.id
    FROM jobs j
    WHERE j.status = 'dead'
      AND /*job_filter*/
      AND (CAST(:no_backup AS boolean) OR /*backed_up*/)
    ORDER BY j.id
    LIMIT :batch_size
    FOR UPDATE OF j /*skip_locked*/
), gone AS (
    DELETE FROM jobs j
    USING doomed d
    WHERE j.id = d.id
    RETURNING j.id, j.status
), events AS (
    DELETE FROM job_events e USING gone g WHERE e.job_id = g.id
)
SELECT id, status AS from_status, 'purged' AS to_status FROM gone
