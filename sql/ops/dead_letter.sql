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
